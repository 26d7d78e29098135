"""A caller hanging up while the agent talks (telephony/peer_gone.py): the send and the close that meet the closed
stream are DEBUG lines, not pipecat's WARNING and ERROR; any other failure is still logged as pipecat logs it.

The socket is starlette's own WebSocket over an ASGI `send` that fails the way uvicorn's does once the peer has
gone (`ClientDisconnected`), with pipecat's own FastAPI client on top."""

from __future__ import annotations

import asyncio

import pytest
from loguru import logger
from pipecat.transports.websocket.fastapi import FastAPIWebsocketCallbacks, FastAPIWebsocketClient
from starlette.websockets import WebSocket
from uvicorn.protocols.utils import ClientDisconnected

from telephony.peer_gone import quiet_when_peer_gone


async def _nothing(_ws) -> None:
    pass


async def _client(failure: Exception) -> FastAPIWebsocketClient:
    """A connected client whose peer is gone: every send and the close raise `failure` in the ASGI server."""
    accepted = False

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        nonlocal accepted
        if message["type"] == "websocket.accept" and not accepted:
            accepted = True
            return
        raise failure

    ws = WebSocket({"type": "websocket", "path": "/stream", "headers": []}, receive, send)
    await ws.accept()
    return FastAPIWebsocketClient(ws, FastAPIWebsocketCallbacks(on_client_connected=_nothing,
                                                                on_client_disconnected=_nothing,
                                                                on_session_timeout=_nothing))


@pytest.fixture
def logs():
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="DEBUG")
    yield lines
    logger.remove(sink)


async def _send_then_close(client: FastAPIWebsocketClient) -> None:
    await client.send('{"event": "media"}')
    await client.disconnect()
    await asyncio.sleep(0)  # the close task's done callback


async def test_pipecat_alone_logs_a_warning_and_an_error_for_a_caller_who_hung_up(logs):
    await _send_then_close(await _client(ClientDisconnected()))
    levels = [level for level, message in logs if "exception" in message]
    assert levels == ["WARNING", "ERROR"], logs


async def test_a_caller_who_hung_up_is_a_debug_line_with_the_call(logs):
    client = await _client(ClientDisconnected())
    quiet_when_peer_gone(client, "call c-1")
    await _send_then_close(client)
    assert not [line for line in logs if line[0] in ("WARNING", "ERROR")], logs
    debug = [message for level, message in logs if level == "DEBUG" and message.startswith("call c-1: ")]
    assert len(debug) == 2 and "dropped" in debug[0] and "before our close" in debug[1], logs


async def test_any_other_failure_is_still_logged_as_pipecat_logs_it(logs):
    client = await _client(RuntimeError("the ASGI server broke"))
    quiet_when_peer_gone(client, "call c-2")
    await _send_then_close(client)
    problems = [(level, message) for level, message in logs if level in ("WARNING", "ERROR")]
    assert [level for level, _ in problems] == ["WARNING", "ERROR"], logs
    assert "RuntimeError (the ASGI server broke)" in problems[0][1] and "the ASGI server broke" in problems[1][1]
