"""A caller who hangs up while the agent is talking is a call's normal end, not an error in the logs.

When Twilio closes the media stream (the caller hung up) at the moment the pipeline sends a message or closes the
socket itself, starlette raises `WebSocketDisconnect` (code 1006, an empty message) from the send. pipecat 1.14's
FastAPI client then logs a WARNING for the send ("exception sending data: WebSocketDisconnect ()") and an ERROR for
the close ("exception while closing the websocket: "), with nothing to act on: in a 2-worker, 80-call benchmark
level 2 of 81 hang-ups did so. A send that fails because the peer is gone leaves the socket closed for sends, so the
close after it fails too, with starlette's RuntimeError for a send after a close. An ERROR a monitoring rule would
page on has to mean something, so a send or close that fails because the peer is gone is logged at DEBUG with the
call it belongs to; any other failure is logged as pipecat logs it. Tied to pipecat 1.14's `FastAPIWebsocketClient.send`, `_can_send` and `_on_close_done`, pinned
like the other seams.
"""

from __future__ import annotations

import asyncio

from loguru import logger
from starlette.websockets import WebSocketDisconnect

# What a send or close raises once the peer has closed the connection: starlette turns the server's OSError (uvicorn's
# ClientDisconnected) into WebSocketDisconnect.
PEER_GONE = (WebSocketDisconnect,)


def quiet_when_peer_gone(client, label: str) -> None:
    """`client`: a call's pipecat FastAPIWebsocketClient (before the pipeline starts); `label`: the call, for logs."""
    pipecat_close_done = client._on_close_done
    gone_at_send = False

    async def send(data: str | bytes) -> None:
        nonlocal gone_at_send
        if not client._can_send():
            return
        try:
            if isinstance(data, bytes):
                await client._websocket.send_bytes(data)
            else:
                await client._websocket.send_text(data)
        except PEER_GONE as exc:
            gone_at_send = True
            logger.debug(f"{label}: a message to the carrier was dropped: it had closed the stream ({exc!r})")
        except Exception as exc:  # as pipecat logs it
            logger.warning(f"{client} exception sending data: {exc.__class__.__name__} ({exc}), application_state: "
                           f"{client._websocket.application_state}")

    def on_close_done(task: asyncio.Task) -> None:
        # After a send that found the peer gone, starlette refuses the close with a RuntimeError of its own (a send
        # after the socket was marked closed): the same hang-up, seen one message later.
        if not task.cancelled() and (isinstance(task.exception(), PEER_GONE)
                                     or (gone_at_send and task.exception() is not None)):
            logger.debug(f"{label}: the carrier had closed the stream before our close ({task.exception()!r})")
            return
        pipecat_close_done(task)

    client.send = send
    client._on_close_done = on_close_done
