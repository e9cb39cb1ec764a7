"""Fixtures for the mcpsock integration tests against third-party MCP code.

Every test gets its own short temporary directory (Unix socket paths must stay
under 108 bytes), its own config file and socket, and XDG directories inside
that temporary directory. The daemon runs in the foreground with its logs in a
file; the log is attached to the report of any failing test.

Nothing here mutates ``os.environ``: children get an explicit ``env``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]

# How long the daemon may take to answer /health and bring its upstreams up.
# Generous: a Python upstream imports pydantic and the MCP SDK on start.
READY_TIMEOUT = 60.0
# How long the daemon may take to exit after SIGTERM (the brief's contract).
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05

# Host used in URLs sent over the Unix socket. The socket path decides where
# the request goes; the host only fills the Host header.
HTTP_BASE = "http://localhost"


def mcpsock_bin() -> Path:
    return Path(os.environ.get("MCPSOCK_BIN") or REPO / "target" / "debug" / "mcpsock")


def venv_script(name: str) -> Path:
    """Absolute path of a console script installed next to this interpreter.

    mcpsock clears the environment of its upstreams, so they must be named by
    absolute path, not looked up in a PATH that points into the venv.
    """
    path = Path(sysconfig.get_path("scripts")) / name
    if not path.is_file():
        pytest.fail(f"{path} is missing; run `bash scripts/test-deps.sh` and use the venv's python")
    return path


# --------------------------------------------------------------------------
# /proc helpers (Linux)
# --------------------------------------------------------------------------


def proc_ppid_map() -> dict[int, int]:
    """pid -> ppid for every process visible in /proc."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue  # exited while we looked
        # The command name is in parentheses and may itself contain spaces or
        # parentheses, so split after the last ')'. Fields: state ppid ...
        rest = stat[stat.rfind(")") + 2 :].split()
        out[int(entry)] = int(rest[1])
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for child, parent in proc_ppid_map().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if is_alive(child):
                found.append(child)
                stack.append(child)
    return found


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; return the ones still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if is_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(POLL_INTERVAL)


# --------------------------------------------------------------------------
# Per-test environment
# --------------------------------------------------------------------------


@dataclass
class Scratch:
    """A short temporary directory with the XDG layout for one test."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for children: the caller's, with XDG dirs redirected here."""
        # mcpsock's own settings from the caller's shell would make the test
        # depend on it; only the log filter is kept (handy when debugging).
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCPSOCK_") or k == "MCPSOCK_LOG"}
        for var, sub in (
            ("XDG_RUNTIME_DIR", "run"),
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_DATA_HOME", "data"),
        ):
            env[var] = str(self.root / sub)
        env.setdefault("RUST_BACKTRACE", "1")
        return env

    def path(self, name: str) -> Path:
        return self.root / name


@pytest.fixture
def scratch(request: pytest.FixtureRequest) -> Iterator[Scratch]:
    # tmp_path lives deep under /tmp/pytest-of-<user>/..., which can push a
    # socket path past the 108-byte sun_path limit; use a short dir instead.
    root = Path(tempfile.mkdtemp(prefix="ms", dir="/tmp"))
    for sub in ("run", "config", "data"):
        (root / sub).mkdir(mode=0o700)
    os.chmod(root / "run", 0o700)
    yield Scratch(root)
    shutil.rmtree(root, ignore_errors=True)


def _attach(request: pytest.FixtureRequest, title: str, source: Any) -> None:
    """Register a log (a Path or an object with ``log_text()``) for failure reports."""
    request.node.__dict__.setdefault("_mcpsock_logs", []).append((title, source))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for title, source in item.__dict__.get("_mcpsock_logs", []):
        if isinstance(source, Path):
            try:
                text = source.read_text(errors="replace")
            except FileNotFoundError:
                continue  # already cleaned up (teardown phase)
        else:
            text = source.log_text()
        report.sections.append((f"{title} ({report.when})", text or "<empty>"))


# --------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------


def uds_client(sock: Path, timeout: float = 10.0) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(sock)),
        base_url=HTTP_BASE,
        timeout=timeout,
    )


@dataclass
class Daemon:
    """A running ``mcpsock serve``."""

    proc: subprocess.Popen[bytes]
    dir: Scratch
    config: Path
    sock: Path
    log: Path
    _log_snapshot: str | None = field(default=None, repr=False)
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def mcp_url(self) -> str:
        return f"{HTTP_BASE}/mcp"

    def log_text(self) -> str:
        if self._log_snapshot is not None:
            return self._log_snapshot
        try:
            return self.log.read_text(errors="replace")
        except OSError as exc:
            return f"<unreadable: {exc}>"

    def health(self) -> dict[str, Any]:
        with uds_client(self.sock) as client:
            response = client.get("/health")
        assert response.status_code == 200, f"/health answered {response.status_code}: {response.text}"
        return response.json()

    def upstream(self, name: str) -> dict[str, Any]:
        health = self.health()
        for upstream in health["upstreams"]:
            if upstream["name"] == name:
                return upstream
        raise AssertionError(f"no upstream {name!r} in /health: {health}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Poll /health until it answers 200 and every upstream is running.

        Fails at once when the daemon exits or an upstream reports ``failed``.
        """
        deadline = time.monotonic() + timeout
        last: str = "no answer yet"
        while True:
            if self.proc.poll() is not None:
                # The log is attached to the report (see pytest_runtest_makereport).
                raise AssertionError(f"mcpsock serve exited with {self.proc.returncode} before it was ready")
            try:
                with uds_client(self.sock, timeout=2.0) as client:
                    response = client.get("/health")
                if response.status_code == 200:
                    health = response.json()
                    states = {u["name"]: u["state"] for u in health["upstreams"]}
                    failed = {u["name"]: u["error"] for u in health["upstreams"] if u["state"] == "failed"}
                    if failed:
                        raise AssertionError(f"upstreams failed to start: {failed}\n/health: {health}")
                    if all(state == "running" for state in states.values()):
                        return health
                    last = f"/health: {health}"
                else:
                    last = f"/health answered {response.status_code}: {response.text[:200]}"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise AssertionError(f"mcpsock not ready within {timeout}s (last: {last})")
            time.sleep(POLL_INTERVAL)

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would, and wait for it to be gone.

        Its upstreams see their stdin close and exit by themselves."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        self.killed = True
        self._log_snapshot = self.log_text()

    def stop(self) -> None:
        """SIGTERM the daemon; it must exit 0 within STOP_TIMEOUT, remove its
        socket, and leave no upstream process behind."""
        if self.killed:
            return
        if self.proc.poll() is not None:
            self._log_snapshot = self.log_text()
            raise AssertionError(f"mcpsock serve had already exited with {self.proc.returncode}")
        children = descendants(self.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            _kill_pids(children)
            self._log_snapshot = self.log_text()
            raise AssertionError(f"mcpsock serve did not exit within {STOP_TIMEOUT}s of SIGTERM (killed it)")
        # Upstreams are reparented when the daemon exits; give them a moment.
        leftover = wait_gone(children, timeout=5.0)
        _kill_pids(leftover)
        self._log_snapshot = self.log_text()
        problems = []
        if code != 0:
            problems.append(f"mcpsock serve exited with {code} after SIGTERM, expected 0")
        if self.sock.exists():
            problems.append(f"socket {self.sock} still exists after the daemon exited")
        if leftover:
            problems.append(
                "processes started by the daemon outlived it: "
                + ", ".join(f"{p} {cmdline(p)}" for p in leftover)
            )
        assert not problems, "; ".join(problems)


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def demo_server_config() -> dict[str, Any]:
    """The workspace's demo server (echo, add, now, countdown) as ``demo``."""
    return {"mcpServers": {"demo": {"command": str(mcpsock_bin().with_name("mcpsock-demo-server"))}}}


def time_server_config() -> dict[str, Any]:
    return {
        "mcpServers": {
            "time": {
                "command": str(venv_script("mcp-server-time")),
                "args": ["--local-timezone", "UTC"],
            }
        }
    }


@pytest.fixture
def bin_path() -> Path:
    path = mcpsock_bin()
    if not os.access(path, os.X_OK):
        pytest.fail(f"mcpsock binary not found at {path}: build it (cargo build) or set MCPSOCK_BIN")
    return path


@pytest.fixture
def start_daemon(request: pytest.FixtureRequest, scratch: Scratch, bin_path: Path):
    """Factory: start ``mcpsock serve`` with a given config and wait until ready."""
    started: list[Daemon] = []

    def start(config: dict[str, Any], name: str = "d") -> Daemon:
        config_path = scratch.path(f"{name}.json")
        config_path.write_text(json.dumps(config, indent=2))
        sock = scratch.path(f"{name}.sock")
        assert len(os.fsencode(sock)) < 108, sock
        log = scratch.path(f"{name}.log")
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(
                [str(bin_path), "serve", "--config", str(config_path), "--socket", str(sock)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=scratch.env,
                cwd=scratch.root,
            )
        daemon = Daemon(proc=proc, dir=scratch, config=config_path, sock=sock, log=log)
        started.append(daemon)
        _attach(request, f"mcpsock serve log [{name}]", daemon)
        daemon.wait_ready()
        return daemon

    yield start

    errors = []
    for daemon in started:
        try:
            daemon.stop()
        except AssertionError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("daemon shutdown: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def daemon(start_daemon) -> Daemon:
    """A daemon serving the real ``mcp-server-time`` as upstream ``time``."""
    return start_daemon(time_server_config())


@pytest.fixture
def attach_log(request: pytest.FixtureRequest):
    """Attach an extra log file to the report if the test fails."""

    def attach(title: str, path: Path) -> None:
        _attach(request, title, path)

    return attach


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"mcpsock binary: {mcpsock_bin()}", f"python: {sys.executable}"]
