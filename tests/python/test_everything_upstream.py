"""A real third-party upstream behind mcpsock: the reference MCP server
``@modelcontextprotocol/server-everything`` (npm, pinned in
npm-upstreams.txt), driven by the official Python SDK over the daemon's Unix
socket.

What the server sends while it works must reach the client as if there were
no gateway: progress, elicitation and sampling requests (answered by the
client, the answer passed back), log messages at the client's level, and
resource updates for the client's subscription.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp import types

from conftest import REPO, Daemon
from test_real_clients import MODERN, http_session, run, uds_http_client

EVERYTHING = (
    REPO / "target" / "npm-upstreams" / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
)


def everything_config() -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not EVERYTHING.is_file():
        pytest.fail(f"node or {EVERYTHING} is missing: run `bash scripts/test-deps.sh`")
    return {"mcpServers": {"everything": {"command": node, "args": [str(EVERYTHING), "stdio"]}}}


@pytest.fixture
def everything(start_daemon) -> Daemon:
    return start_daemon(everything_config(), name="everything")


def texts(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def wait_for(what: str, condition) -> None:
    with anyio.fail_after(20, shield=False):
        while not condition():
            await anyio.sleep(0.02)


def test_progress_reaches_the_client(everything: Daemon) -> None:
    async def body() -> None:
        async with http_session(everything, "legacy") as client:
            updates: list[tuple[float, float | None]] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                updates.append((progress, total))

            result = await client.call_tool(
                "everything__trigger-long-running-operation",
                {"duration": 0.3, "steps": 3},
                progress_callback=on_progress,
            )
            assert not result.is_error, result
            assert [progress for progress, _ in updates] == [1, 2, 3], updates
            assert all(total == 3 for _, total in updates), updates

    run(body)


def test_elicitation_and_sampling_are_answered_by_the_client(everything: Daemon) -> None:
    asked: list[str] = []
    sampled: list[Any] = []

    async def on_elicit(context, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True})

    async def on_sample(context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        sampled.append(params.messages[0].content)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="Paris, of course"), model="test-model"
        )

    async def body() -> None:
        async with uds_http_client(everything.sock) as http:
            from mcp.client.streamable_http import streamable_http_client

            transport = streamable_http_client(everything.mcp_url, http_client=http)
            async with Client(
                transport, mode="legacy", elicitation_callback=on_elicit, sampling_callback=on_sample
            ) as client:
                # These tools appear once the server has seen the client's
                # capabilities (mcpsock declares them upstream on its behalf).
                async def listed() -> set[str]:
                    return {tool.name for tool in (await client.list_tools()).tools}

                with anyio.fail_after(20):
                    while not {"everything__trigger-elicitation-request", "everything__trigger-sampling-request"} <= await listed():
                        await anyio.sleep(0.05)
                elicited = await client.call_tool("everything__trigger-elicitation-request", {})
                assert "Name: Ada Lovelace" in texts(elicited), elicited
                assert len(asked) == 1, asked
                answer = await client.call_tool(
                    "everything__trigger-sampling-request", {"prompt": "Capital of France?", "maxTokens": 20}
                )
                assert "Paris, of course" in texts(answer), answer
                assert sampled and "Capital of France?" in sampled[0].text, sampled

    run(body)


def test_logging_at_the_clients_level_and_resource_updates(everything: Daemon) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []
    updated: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def on_message(message) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.append(str(message.params.uri))

    async def body() -> None:
        async with uds_http_client(everything.sock) as http:
            from mcp.client.streamable_http import streamable_http_client

            transport = streamable_http_client(everything.mcp_url, http_client=http)
            async with Client(transport, mode="legacy", logging_callback=on_log, message_handler=on_message) as client:
                await client.set_logging_level("debug")
                # The server logs once at once, then every 5 s, at random levels.
                await client.call_tool("everything__toggle-simulated-logging", {})
                await wait_for("a log message", lambda: logs)
                await client.call_tool("everything__toggle-simulated-logging", {})

                resources = (await client.list_resources()).resources
                assert resources, "server-everything lists resources"
                uri = str(resources[0].uri)
                await client.subscribe_resource(uri)
                # The server announces an update of every subscribed resource
                # at once, then every 5 s.
                await client.call_tool("everything__toggle-subscriber-updates", {})
                await wait_for(f"an update of {uri}", lambda: uri in updated)
                await client.call_tool("everything__toggle-subscriber-updates", {})
                await client.unsubscribe_resource(uri)

    run(body)
    assert {log.level for log in logs} <= {
        "debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"
    }, logs


def test_a_modern_client_answers_a_legacy_upstreams_questions_by_input_required(everything: Daemon) -> None:
    """2026-07-28 clients take no requests from a server; they answer an
    ``InputRequiredResult`` and retry. server-everything speaks the earlier
    revisions and asks with requests of its own: mcpsock parks its call,
    hands the question to the client as an ``InputRequiredResult`` with a
    sealed ``requestState``, and passes the retry's answer back to it. The
    SDK's own retry loop drives it.
    """
    asked: list[str] = []
    sampled: list[Any] = []

    async def on_elicit(context, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True})

    async def on_sample(context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        sampled.append(params.messages[0].content)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="Paris, of course"), model="test-model"
        )

    async def body() -> None:
        async with uds_http_client(everything.sock) as http:
            from mcp.client.streamable_http import streamable_http_client

            transport = streamable_http_client(everything.mcp_url, http_client=http)
            async with Client(
                transport, mode=MODERN, elicitation_callback=on_elicit, sampling_callback=on_sample
            ) as client:
                assert client.protocol_version == MODERN
                elicited = await client.call_tool("everything__trigger-elicitation-request", {})
                assert not elicited.is_error, elicited
                assert "Name: Ada Lovelace" in texts(elicited), elicited
                assert len(asked) == 1, asked
                answer = await client.call_tool(
                    "everything__trigger-sampling-request", {"prompt": "Capital of France?", "maxTokens": 20}
                )
                assert "Paris, of course" in texts(answer), answer
                assert sampled and "Capital of France?" in sampled[0].text, sampled

    run(body)


def test_a_parked_calls_request_state_is_single_use_and_tamper_proof(everything: Daemon) -> None:
    """The retry loop driven by hand: a forged, altered or replayed
    ``requestState`` is refused with a JSON-RPC error that says what to do,
    and the genuine one still works once."""
    from mcp.shared.exceptions import MCPError

    async def body() -> None:
        async with uds_http_client(everything.sock) as http:
            from mcp.client.streamable_http import streamable_http_client

            transport = streamable_http_client(everything.mcp_url, http_client=http)
            async with Client(transport, mode=MODERN) as client:
                tool = "everything__trigger-elicitation-request"
                first = await client.session.call_tool(tool, {}, allow_input_required=True)
                assert isinstance(first, types.InputRequiredResult), first
                assert first.request_state and first.request_state.startswith("mcpsock."), first
                [(key, question)] = list((first.input_requests or {}).items())
                assert question.method == "elicitation/create", question
                answer = {key: {"action": "accept", "content": {"name": "Grace Hopper", "check": True}}}

                async def refused(state: str, name: str = tool) -> str:
                    try:
                        await client.session.call_tool(
                            name, {}, input_responses=answer, request_state=state, allow_input_required=True
                        )
                    except MCPError as error:
                        assert error.error.code == -32602, error.error
                        return error.error.message
                    raise AssertionError(f"{state!r} for {name} was accepted")

                altered = first.request_state[:-2] + ("AA" if not first.request_state.endswith("AA") else "BB")
                assert "was altered" in await refused(altered)
                assert "was not issued by this mcpsock" in await refused("mcpsock.rs2.forged.state")
                assert "was not issued by this mcpsock" in await refused(first.request_state, "everything__echo")

                done = await client.session.call_tool(
                    tool, {}, input_responses=answer, request_state=first.request_state, allow_input_required=True
                )
                assert isinstance(done, types.CallToolResult), done
                assert "Name: Grace Hopper" in texts(done), done
                assert "already used" in await refused(first.request_state)

    run(body)
