"""``mcpsock bench`` pointed at a server nobody here wrote: the TypeScript
SDK's example Streamable HTTP server (``simpleStreamableHttp``, shipped in
``@modelcontextprotocol/sdk``, which ``scripts/test-deps.sh`` installs with
server-everything). The load generator must work against it unchanged:
initialize, its session id, SSE replies, every response checked.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading

import pytest

from conftest import REPO, mcpsock_bin

EXAMPLE = (
    REPO / "target" / "npm-upstreams" / "node_modules" / "@modelcontextprotocol" / "sdk" / "dist" / "esm"
    / "examples" / "server" / "simpleStreamableHttp.js"
)


@pytest.fixture
def typescript_example():
    """The example server on a free loopback port: its MCP URL."""
    node = shutil.which("node")
    if node is None or not EXAMPLE.is_file():
        pytest.fail(f"node or {EXAMPLE} is missing: run `bash scripts/test-deps.sh`")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [node, str(EXAMPLE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": "/usr/bin:/bin", "MCP_PORT": str(port)},
    )
    output: list[str] = []
    # The server says when it listens, then logs every request body; its
    # output is drained so that it never blocks on a full pipe.
    for line in server.stdout:
        output.append(line)
        if "listening on port" in line:
            break
    else:
        pytest.fail(f"the example server did not start:\n{''.join(output)}")
    drain = threading.Thread(target=lambda: output.extend(server.stdout), daemon=True)
    drain.start()
    yield f"http://127.0.0.1:{port}/mcp"
    server.terminate()
    server.wait(timeout=10)
    drain.join(timeout=10)


def test_mcpsock_bench_drives_the_typescript_sdk_example_server(typescript_example: str) -> None:
    result = subprocess.run(
        [str(mcpsock_bin()), "bench", "--endpoint", typescript_example, "--tool", "greet", "--arg", "name=bench",
         "--connections", "4", "--requests", "200", "--warmup", "0s", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests"] == 200, report
    assert report["errors"] == 0, report
    assert report["first_error"] is None, report
    assert report["latency_us"]["p50"] > 0, report


def test_mcpsock_bench_reports_a_wrong_tool_on_that_server(typescript_example: str) -> None:
    result = subprocess.run(
        [str(mcpsock_bin()), "bench", "--endpoint", typescript_example, "--tool", "no-such-tool",
         "--requests", "5", "--warmup", "0s", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    # Every call fails: the report counts them, and the command fails with
    # the server's own words.
    assert result.returncode == 1, result
    report = json.loads(result.stdout)
    assert (report["requests"], report["errors"]) == (0, 5), report
    assert "Tool no-such-tool not found" in report["first_error"], report
    assert "no request succeeded" in result.stderr, result.stderr
