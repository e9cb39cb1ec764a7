"""A remote upstream over loopback TCP: the reference MCP server
``@modelcontextprotocol/server-everything`` (npm, pinned in
npm-upstreams.txt) in its Streamable HTTP mode, named in the config by
``url`` with a secret header, and driven by the official Python SDK through
the daemon's Unix socket.

What the server sends while it works reaches the client as it does from a
stdio upstream: progress, log messages, resource updates; the header value
never shows in the daemon's status, config or log.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp import Client
from mcp import types

import test_everything_upstream as over_stdio
from conftest import Daemon, Scratch, _attach, uds_client
from test_everything_upstream import EVERYTHING, texts, wait_for
from test_real_clients import http_session, run, uds_http_client

SECRET = "Bearer hunter2-never-shown"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def remote(request: pytest.FixtureRequest, scratch: Scratch) -> Iterator[str]:
    """server-everything serving Streamable HTTP on a loopback port: its URL."""
    node = shutil.which("node")
    if node is None or not EVERYTHING.is_file():
        pytest.fail(f"node or {EVERYTHING} is missing: run `bash scripts/test-deps.sh`")
    port = free_port()
    log = scratch.path("everything.log")
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [node, str(EVERYTHING), "streamableHttp"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**scratch.env, "PORT": str(port)},
        )
    _attach(request, "server-everything log", log)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, f"server-everything exited: {log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, "server-everything did not listen"
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def gateway(start_daemon, remote: str) -> Daemon:
    config = {"mcpServers": {"everything": {"type": "http", "url": remote, "headers": {"Authorization": SECRET}}}}
    daemon = start_daemon(config, name="gateway")
    with uds_client(daemon.sock) as http:
        deadline = time.monotonic() + 30
        while http.get("/health").json()["upstreams"][0]["state"] != "running":
            assert time.monotonic() < deadline, http.get("/health").text
            time.sleep(0.05)
    return daemon


def test_a_tool_call_and_its_progress_pass_through(gateway: Daemon) -> None:
    async def body() -> None:
        async with http_session(gateway, "legacy") as client:
            echo = await client.call_tool("everything__echo", {"message": "over http"})
            assert "over http" in texts(echo), echo
            updates: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                updates.append(progress)

            result = await client.call_tool(
                "everything__trigger-long-running-operation",
                {"duration": 0.3, "steps": 3},
                progress_callback=on_progress,
            )
            assert not result.is_error, result
            assert updates == [1, 2, 3], updates

    run(body)


def test_log_messages_and_resource_updates_pass_through(gateway: Daemon) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []
    updated: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def on_message(message) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.append(str(message.params.uri))

    async def body() -> None:
        async with uds_http_client(gateway.sock) as http:
            from mcp.client.streamable_http import streamable_http_client

            transport = streamable_http_client(gateway.mcp_url, http_client=http)
            async with Client(transport, mode="legacy", logging_callback=on_log, message_handler=on_message) as client:
                await client.set_logging_level("debug")
                # The server logs once at once (on its session's standalone
                # stream, which the gateway reads), then every 5 s.
                await client.call_tool("everything__toggle-simulated-logging", {})
                await wait_for("a log message from the remote server", lambda: logs)
                await client.call_tool("everything__toggle-simulated-logging", {})

                uri = str((await client.list_resources()).resources[0].uri)
                await client.subscribe_resource(uri)
                await client.call_tool("everything__toggle-subscriber-updates", {})
                await wait_for(f"an update of {uri}", lambda: uri in updated)
                await client.call_tool("everything__toggle-subscriber-updates", {})
                await client.unsubscribe_resource(uri)

    run(body)
    # The simulated messages, among others it logs (such as resource reads).
    assert any("message" in str(log.data).lower() for log in logs), logs


def test_list_changes_and_the_servers_own_requests_pass_through(gateway: Daemon) -> None:
    """The same checks as over stdio: server-everything adds tools once it
    has seen the client's capabilities (a tools ``list_changed`` the gateway
    follows), then asks the client for elicitation and sampling; here its
    requests arrive on the HTTP stream of the call that caused them."""
    over_stdio.test_elicitation_and_sampling_are_answered_by_the_client(gateway)


def test_status_names_the_url_and_never_the_header_value(gateway: Daemon, remote: str) -> None:
    with uds_client(gateway.sock) as http:
        status = http.get("/status").json()
        config = http.get("/config").json()
        health = http.get("/health").json()
    upstream = status["upstreams"][0]
    assert (upstream["kind"], upstream["url"], upstream["pid"]) == ("http", remote, None), upstream
    assert upstream["tools"] > 0, upstream
    assert health["upstreams"][0]["kind"] == "http", health
    server = config["servers"][0]
    assert server["url"] == remote and server["headers"] == {"Authorization": "<redacted>"}, server
    for text in (str(status), str(config), str(health), gateway.log_text()):
        assert "hunter2" not in text
