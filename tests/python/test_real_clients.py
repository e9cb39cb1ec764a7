"""mcpsock against MCP code nobody on this project wrote.

Client side: the official MCP Python SDK (``mcp``, pinned in requirements.txt),
over Streamable HTTP on the daemon's Unix socket and over stdio through
``mcpsock bridge``. Server side: the reference ``mcp-server-time``.

Note that ``mcp`` 2.x is built on ``httpx2`` (not ``httpx``): the Streamable
HTTP client takes a pre-built ``httpx2.AsyncClient`` (``http_client=``), which
is how it is pointed at a Unix socket here. Plain ``httpx`` is used only for
the daemon's ``/health`` endpoint (see conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.client.stdio as sdk_stdio
import pytest
from mcp import Client, MCPError, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from conftest import Daemon, Scratch, cmdline, descendants, is_alive, mcpsock_bin, proc_ppid_map

EXPECTED_TOOLS = {"time__get_current_time", "time__convert_time"}
MODERN = "2026-07-28"
# Upper bound for any one async test body, so a hang fails instead of blocking CI.
TEST_TIMEOUT = 60.0


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


@dataclass
class WireLog:
    """What the SDK's HTTP client actually sent and received."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)

    async def on_request(self, request: httpx2.Request) -> None:
        body: Any = None
        if request.method == "POST":
            try:
                body = json.loads(request.content)
            except (ValueError, httpx2.RequestNotRead):
                body = None
        self.requests.append({"method": request.method, "headers": dict(request.headers), "body": body})

    async def on_response(self, response: httpx2.Response) -> None:
        rpc_method = None
        if response.request.method == "POST":
            try:
                rpc_method = json.loads(response.request.content).get("method")
            except (ValueError, AttributeError, httpx2.RequestNotRead):
                pass
        self.responses.append(
            {
                "method": response.request.method,
                "rpc_method": rpc_method,
                "status": response.status_code,
                "headers": dict(response.headers),
            }
        )

    def posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    def rpc_methods(self) -> list[str]:
        return [p["body"].get("method") for p in self.posts() if isinstance(p["body"], dict)]


def uds_http_client(sock: Path, wire: WireLog | None = None) -> httpx2.AsyncClient:
    """An httpx2 client whose every request goes to the Unix socket ``sock``.

    Timeouts are the SDK's own defaults (see mcp.shared._httpx_utils.create_mcp_http_client).
    """
    hooks = {"request": [wire.on_request], "response": [wire.on_response]} if wire else {}
    return httpx2.AsyncClient(
        transport=httpx2.AsyncHTTPTransport(uds=str(sock)),
        timeout=httpx2.Timeout(30.0, read=300.0),
        event_hooks=hooks,
    )


@asynccontextmanager
async def http_session(daemon: Daemon, mode: str, wire: WireLog | None = None) -> AsyncIterator[Client]:
    """The SDK's high-level Client over Streamable HTTP on the daemon's socket."""
    async with uds_http_client(daemon.sock, wire) as http:
        transport = streamable_http_client(daemon.mcp_url, http_client=http)
        async with Client(transport, mode=mode) as client:
            yield client


def run(coro_fn, *args: Any) -> Any:
    """Run one async test body with an overall deadline."""

    async def bounded() -> Any:
        with anyio.fail_after(TEST_TIMEOUT):
            return await coro_fn(*args)

    try:
        return asyncio.run(bounded())
    except BaseExceptionGroup as group:
        # anyio task groups wrap a failed assertion in (nested) exception
        # groups; report the single underlying error when there is one.
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if leaf is group:
            raise
        raise leaf from None


async def assert_lists_time_tools(client: Client) -> None:
    listing = await client.list_tools()
    names = {tool.name for tool in listing.tools}
    assert EXPECTED_TOOLS <= names, f"tools/list is missing {EXPECTED_TOOLS - names}; got {sorted(names)}"
    # Nothing leaks through under its upstream (un-prefixed) name.
    assert not names & {"get_current_time", "convert_time"}, sorted(names)
    schema = next(t for t in listing.tools if t.name == "time__get_current_time").input_schema
    assert "timezone" in schema.get("properties", {}), schema


async def assert_current_time_utc(client: Client) -> dict[str, Any]:
    result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
    assert isinstance(result, CallToolResult)
    assert not result.is_error, f"tool call failed: {result}"
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    assert texts, f"no text content in {result}"
    data = json.loads(texts[0])
    assert "datetime" in data, data
    assert data["timezone"] == "UTC", data
    # The upstream really ran now: its clock agrees with ours.
    stamp = datetime.fromisoformat(data["datetime"])
    assert stamp.utcoffset() == timedelta(0), data
    assert abs(stamp - datetime.now(timezone.utc)) < timedelta(minutes=5), data
    return data


async def assert_unknown_tool_fails(client: Client, name: str) -> None:
    """An unknown tool is an error: a JSON-RPC error (what the spec asks for),
    or at least an ``isError`` result."""
    try:
        result = await client.call_tool(name, {"timezone": "UTC"})
    except MCPError:
        return
    assert result.is_error, f"calling unknown tool {name!r} succeeded: {result}"


def runs(pid: int, argv: list[str]) -> bool:
    """Whether ``pid``'s command line starts with ``argv`` (possibly after an
    interpreter, for a script standing in for the binary)."""
    cmd = cmdline(pid)
    return cmd[: len(argv)] == argv or cmd[1 : 1 + len(argv)] == argv


def find_children(parent: int, argv: list[str]) -> list[int]:
    return [pid for pid in descendants(parent) if runs(pid, argv)]


def time_server_pids(daemon: Daemon) -> list[int]:
    """Live descendants of the daemon whose command line runs mcp-server-time."""
    return [
        pid
        for pid in descendants(daemon.pid)
        if any(os.path.basename(arg) == "mcp-server-time" for arg in cmdline(pid)[:2])
    ]


# --------------------------------------------------------------------------
# 1. Legacy era: initialize handshake over Streamable HTTP
# --------------------------------------------------------------------------


def test_legacy_streamable_http_client(daemon: Daemon) -> None:
    wire = WireLog()

    async def body() -> None:
        async with http_session(daemon, "legacy", wire) as client:
            assert client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS, client.protocol_version
            await assert_lists_time_tools(client)
            await assert_current_time_utc(client)
            await assert_unknown_tool_fails(client, "time__no_such_tool")
            await assert_unknown_tool_fails(client, "nosuchserver__get_current_time")
            await assert_unknown_tool_fails(client, "get_current_time")
            # The session is still usable after the errors.
            await assert_current_time_utc(client)

    run(body)
    methods = wire.rpc_methods()
    assert methods[:1] == ["initialize"], methods
    assert "server/discover" not in methods, methods
    bad = [r for r in wire.responses if r["method"] == "POST" and r["status"] >= 400]
    assert not bad, f"HTTP errors on the legacy wire: {bad}"


# --------------------------------------------------------------------------
# 2. The 2026-07-28 stateless era
# --------------------------------------------------------------------------
#
# Driven by the Python SDK itself, not by hand-written HTTP: mcp 2.3.0 speaks
# 2026-07-28 natively. `Client(..., mode=...)` selects the era:
#   * mode="auto" (the SDK default) sends `server/discover` at 2026-07-28 and
#     adopts the result; it falls back to `initialize` only when the server
#     gives no sign of speaking 2026-07-28. We assert it did NOT fall back.
#   * mode="2026-07-28" adopts the version with no probe at all, which is what
#     a client that already knows the server does.
# In both, every request is a self-contained POST: header
# `MCP-Protocol-Version: 2026-07-28`, `Mcp-Method`/`Mcp-Name` headers, and a
# per-request `_meta` carrying `io.modelcontextprotocol/protocolVersion`,
# `.../clientInfo` and `.../clientCapabilities`; no `initialize`, no session.
# The wire log below checks that this is really what went over the socket.


@pytest.mark.parametrize("mode", ["auto", MODERN])
def test_2026_07_28_stateless_era(daemon: Daemon, mode: str) -> None:
    wire = WireLog()

    async def body() -> None:
        async with http_session(daemon, mode, wire) as client:
            assert client.protocol_version == MODERN, (
                f"mode={mode!r} negotiated {client.protocol_version!r}: the daemon did not "
                "answer server/discover for 2026-07-28, so the SDK fell back to initialize"
            )
            await assert_lists_time_tools(client)
            await assert_current_time_utc(client)
            await assert_unknown_tool_fails(client, "time__no_such_tool")
            await assert_unknown_tool_fails(client, "nosuchserver__get_current_time")

    run(body)

    methods = wire.rpc_methods()
    assert "initialize" not in methods, methods
    assert "tools/list" in methods and "tools/call" in methods, methods
    if mode == "auto":
        assert methods[0] == "server/discover", methods
    else:
        assert "server/discover" not in methods, methods
    for post in wire.posts():
        headers, rpc = post["headers"], post["body"]
        assert headers.get("mcp-protocol-version") == MODERN, headers
        assert "mcp-session-id" not in headers, f"stateless request carried a session: {headers}"
        assert rpc["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == MODERN, rpc
        assert "io.modelcontextprotocol/clientCapabilities" in rpc["params"]["_meta"], rpc
    for response in wire.responses:
        assert "mcp-session-id" not in response["headers"], f"2026-07-28 response opened a session: {response}"
    # The SDK turns HTTP error replies into MCPError; check the statuses of
    # the requests that had to succeed.
    ok_calls = [r for r in wire.responses if r["rpc_method"] in ("server/discover", "tools/list")]
    assert ok_calls and all(r["status"] == 200 for r in ok_calls), ok_calls


# --------------------------------------------------------------------------
# 3. The stdio bridge, driven by the SDK's stdio client
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_stdio_bridge(
    daemon: Daemon, scratch: Scratch, bin_path: Path, attach_log, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    # The SDK's stdio client closes the server's stdin, waits
    # PROCESS_TERMINATION_TIMEOUT (2 s), and only then kills the process
    # group. Record whether it had to kill: a bridge must exit by itself when
    # its client goes away.
    kills: list[int] = []
    real_terminate = sdk_stdio._terminate_process_tree

    async def recording_terminate(process: Any) -> None:
        kills.append(process.pid)
        await real_terminate(process)

    monkeypatch.setattr(sdk_stdio, "_terminate_process_tree", recording_terminate)

    upstream_pid = daemon.upstream("time")["pid"]
    bridge_argv = [str(bin_path), "bridge", "--socket", str(daemon.sock)]
    bridge_log = scratch.path(f"bridge-{mode}.log")
    attach_log("mcpsock bridge stderr", bridge_log)
    seen: dict[str, Any] = {}

    async def body() -> None:
        params = StdioServerParameters(
            command=bridge_argv[0], args=bridge_argv[1:], env=scratch.env, cwd=str(scratch.root)
        )
        with open(bridge_log, "w") as errlog:
            async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
                bridges = find_children(os.getpid(), bridge_argv)
                assert len(bridges) == 1, f"expected one bridge process, found {bridges}"
                seen["pid"] = bridges[0]
                seen["version"] = client.protocol_version
                await assert_lists_time_tools(client)
                await assert_current_time_utc(client)
                await assert_unknown_tool_fails(client, "time__no_such_tool")
            seen["exited_at"] = time.monotonic()

    run(body)

    pid = seen["pid"]
    assert not is_alive(pid), f"bridge {pid} still running after its client exited: {cmdline(pid)}"
    assert not kills, (
        f"bridge {pid} did not exit on stdin EOF within "
        f"{sdk_stdio.PROCESS_TERMINATION_TIMEOUT}s; the SDK had to kill it"
    )
    # Nothing the bridge started survives it either (it runs in its own session).
    strays = [p for p in proc_ppid_map() if runs(p, bridge_argv) and is_alive(p)]
    assert not strays, f"orphaned bridge processes: {strays}"
    # The daemon is unaffected and kept the same upstream.
    after = daemon.upstream("time")
    assert after["state"] == "running" and after["pid"] == upstream_pid, after


# --------------------------------------------------------------------------
# 4. Two concurrent clients share one upstream process
# --------------------------------------------------------------------------


def test_concurrent_sessions_share_one_upstream(daemon: Daemon) -> None:
    both_connected = anyio.Event()
    connected = 0
    results: dict[str, Any] = {}

    async def session(tag: str) -> None:
        nonlocal connected
        async with http_session(daemon, "legacy") as client:
            connected += 1
            if connected == 2:
                both_connected.set()
            # Hold both sessions open at once before either calls.
            with anyio.fail_after(20):
                await both_connected.wait()
            await assert_lists_time_tools(client)
            results[tag] = await assert_current_time_utc(client)
            # While both sessions are still open, count the upstreams.
            results[f"{tag}-upstreams"] = time_server_pids(daemon)

    async def body() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(session, "a")
            tg.start_soon(session, "b")

    run(body)

    assert "a" in results and "b" in results, results
    for tag in ("a", "b"):
        pids = results[f"{tag}-upstreams"]
        assert len(pids) == 1, f"expected one mcp-server-time under daemon {daemon.pid}, found " + ", ".join(
            f"{p} {cmdline(p)}" for p in pids
        )
    assert results["a-upstreams"] == results["b-upstreams"]
    (pid,) = time_server_pids(daemon)
    assert pid == results["a-upstreams"][0], "the upstream was restarted during the test"
    health = daemon.health()
    (time_up,) = [u for u in health["upstreams"] if u["name"] == "time"]
    assert time_up["pid"] == pid, f"/health pid {time_up['pid']} != actual upstream pid {pid}: {health}"
    assert time_up["state"] == "running" and time_up["tools"] == 2 and time_up["error"] is None, health
    assert health["status"] == "ok", health


# --------------------------------------------------------------------------
# 5. Bridge with no daemon
# --------------------------------------------------------------------------


def test_bridge_without_daemon_fails_fast(scratch: Scratch, bin_path: Path) -> None:
    sock = Path(f"/tmp/ms-absent-{uuid.uuid4().hex[:12]}.sock")
    assert not sock.exists()
    err_path = scratch.path("bridge.err")
    started = time.monotonic()
    with open(err_path, "wb") as err:
        # stdin stays open (a real MCP client keeps it open), so the bridge
        # must notice the missing daemon by itself, not through EOF.
        proc = subprocess.Popen(
            [str(bin_path), "bridge", "--socket", str(sock)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=scratch.env,
            cwd=scratch.root,
        )
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            pytest.fail(f"bridge with no daemon at {sock} was still running after 10 s")
        finally:
            proc.stdin.close()
            stdout = proc.stdout.read()
            proc.stdout.close()
    elapsed = time.monotonic() - started
    stderr = err_path.read_text(errors="replace")
    # `mcpsock --help` documents exit code 5 as "no daemon reachable".
    assert code == 5, f"bridge exited {code} with no daemon, expected 5; stderr: {stderr!r}"
    assert elapsed < 5, f"bridge took {elapsed:.1f}s to give up"
    # e.g. "no mcpsock daemon is running at unix:///tmp/...".
    assert re.search(r"not running|no (mcpsock )?daemon", stderr, re.IGNORECASE), f"unhelpful stderr: {stderr!r}"
    # stdout is the MCP channel: no human-readable noise there.
    assert stdout == b"" or stdout.lstrip().startswith(b"{"), f"non-JSON-RPC output on stdout: {stdout!r}"
    assert not sock.exists()


# --------------------------------------------------------------------------
# Long tool lists come in pages of mcpsock's own cursors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", MODERN])
def test_the_sdk_pages_through_a_long_tool_list(start_daemon, mode: str) -> None:
    fake = str(mcpsock_bin().with_name("mcpsock-fake-upstream"))
    config = {"mcpServers": {"fake": {"command": fake, "args": ["--extra-tools", "150"]}}, "list_page_size": 40}
    daemon = start_daemon(config, name="pages")

    async def body() -> None:
        async with http_session(daemon, mode) as client:
            names: list[str] = []
            cursor = None
            pages = 0
            while True:
                page = await client.list_tools(cursor=cursor)
                pages += 1
                assert len(page.tools) <= 40, len(page.tools)
                names.extend(tool.name for tool in page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert pages == 5, pages
            assert len(names) == len(set(names)) == 161, len(names)
            assert names[-1] == "fake__extra_0149", names[-3:]
            # The SDK finds a tool it has not listed yet by paging on its own.
            result = await client.call_tool("fake__extra_0149", {"text": "from the last page"})
            assert not result.is_error, result
            assert result.content[0].text == "from the last page", result

    run(body)
