"""Sessions that survive the daemon: the Python SDK, in legacy mode, keeps
its session across a ``kill -9`` and a restart, and a call cut short by the
crash ends with the daemon's "server restarted; retry" error instead of
hanging (its client resumes the stream with ``Last-Event-ID``)."""

from __future__ import annotations

import anyio
import pytest
from mcp import MCPError, types
from mcp.shared.message import ClientMessageMetadata

from conftest import demo_server_config
from test_real_clients import WireLog, http_session, run


def session_ids(wire: WireLog) -> set[str]:
    return {
        request["headers"]["mcp-session-id"]
        for request in wire.requests
        if "mcp-session-id" in request["headers"]
    }


def test_a_session_survives_kill_9_and_its_cut_call_gets_a_retry_error(start_daemon) -> None:
    config = demo_server_config()
    daemon = start_daemon(config)
    wire = WireLog()

    async def body() -> None:
        async with http_session(daemon, "legacy", wire) as client:
            assert (await client.call_tool("demo__echo", {"text": "before"})).content[0].text == "before"

            first_event = anyio.Event()
            seen_ids: list[str] = []

            async def on_event_id(event_id: str) -> None:
                seen_ids.append(event_id)
                first_event.set()

            outcome: dict[str, BaseException | types.CallToolResult] = {}

            async def slow_call() -> None:
                try:
                    outcome["result"] = await client.session.send_request(
                        types.CallToolRequest(
                            params=types.CallToolRequestParams(
                                name="demo__countdown", arguments={"steps": 600, "interval_ms": 100}
                            )
                        ),
                        types.CallToolResult,
                        metadata=ClientMessageMetadata(on_resumption_token_update=on_event_id),
                    )
                except MCPError as error:
                    outcome["error"] = error

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(slow_call)
                # The stream's first event id reached the client: the call is
                # in flight and resumable. Now the daemon dies.
                await first_event.wait()
                daemon.kill()
                restarted = start_daemon(config)
                assert restarted.sock == daemon.sock
            # The SDK resumed with Last-Event-ID after the server's retry
            # interval and read the error the restarted daemon stored.
            assert "error" in outcome, f"the cut call ended with {outcome}"
            assert "server restarted; retry" in str(outcome["error"])
            assert outcome["error"].error.code == -32603

            # The same session goes on: no new initialize, the same id.
            assert (await client.call_tool("demo__echo", {"text": "after"})).content[0].text == "after"
        # It resumed from the last event it had before the crash, and the
        # error arrived as a stored event with an id of its own.
        resumes = [r for r in wire.requests if r["method"] == "GET" and "last-event-id" in r["headers"]]
        assert resumes and resumes[0]["headers"]["last-event-id"] == seen_ids[0]
        assert len(seen_ids) == 2 and seen_ids[0] != seen_ids[1], seen_ids
        assert len(session_ids(wire)) == 1, f"the client switched sessions: {session_ids(wire)}"
        assert wire.rpc_methods().count("initialize") == 1

    run(body)
