"""The Media Streams socket: reads `connected`/`start`, admits the stream with its signed per-call token, then
hands the socket to a call session. Anything before `start` other than `connected` is logged and dropped.

With TWILIO_AUTH_TOKEN set, the upgrade must carry a valid X-Twilio-Signature, except for softphone calls
(direction `softphone`, opened by `POST /api/v1/softphone/calls`): a browser cannot set headers on a WebSocket, so an
unsigned upgrade is let through to `start` and then admitted only for such a call, on its signed, short-lived
per-call token. A signature that is present but wrong is refused at once, as before."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from loguru import logger

from runtime.call_session import CallSession
from runtime.context import runtime_of
from runtime.store import repo
from runtime.tokens import TokenError
from telephony.twilio import signature
from telephony.twilio.serializer import ProtocolWarnings, TwilioMediaSerializer, parse_message

router = APIRouter(prefix="/telephony/twilio", tags=["telephony"])

POLICY_VIOLATION = 1008
SOFTPHONE = "softphone"  # calls.direction of calls placed from a softphone


async def _read_start(ws: WebSocket, warn: ProtocolWarnings) -> dict | None:
    """Messages until `start`; None if the socket closes first."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        data = message.get("text") if message.get("text") is not None else message.get("bytes")
        if data is None:
            continue
        parsed = parse_message(data, warn)
        if parsed is None:
            continue
        event = parsed["event"]
        if event == "start" and isinstance(parsed.get("start"), dict):
            return parsed
        if event == "connected":
            continue
        warn("message before start", repr(event)[:40])


async def _refuse(ws: WebSocket, why: str) -> None:
    logger.warning(f"media stream refused: {why}")
    try:
        await ws.close(code=POLICY_VIOLATION, reason=why[:120])
    except RuntimeError:
        pass  # already closed by the peer


@router.websocket("/stream")
async def media_stream(ws: WebSocket) -> None:
    rt = runtime_of(ws)
    url = signature.public_url(ws, rt.settings, websocket=True)
    presented = ws.headers.get("x-twilio-signature")
    signed = signature.is_valid(rt.settings, url, {}, presented)
    if not signed and presented:
        await ws.close(code=POLICY_VIOLATION, reason="invalid Twilio signature")
        logger.warning(f"media stream refused: invalid X-Twilio-Signature for {url}")
        return
    await ws.accept()
    warn = ProtocolWarnings("media stream (before start)")
    try:
        start_msg = await asyncio.wait_for(_read_start(ws, warn), timeout=rt.settings.start_timeout_secs)
    except (asyncio.TimeoutError, TimeoutError):
        return await _refuse(ws, f"no start message within {rt.settings.start_timeout_secs:g}s")
    except WebSocketDisconnect:
        start_msg = None
    if start_msg is None:
        logger.info("media stream closed before start")
        return

    start = start_msg["start"]
    params = start.get("customParameters") if isinstance(start.get("customParameters"), dict) else {}
    call_id, token = params.get("call_id"), params.get("token")
    stream_sid = start.get("streamSid") or start_msg.get("streamSid")
    if not isinstance(call_id, str) or not isinstance(token, str) or not isinstance(stream_sid, str):
        return await _refuse(ws, "start lacks streamSid, call_id or token")
    try:
        rt.tokens.verify(token, call_id)
    except TokenError as exc:
        return await _refuse(ws, f"call {call_id[:40]}: {exc}")
    call = await repo.get_call(rt.db, call_id)
    if call is None:
        return await _refuse(ws, f"call {call_id}: unknown call")
    if not signed and call.direction != SOFTPHONE:
        return await _refuse(ws, f"call {call_id}: missing X-Twilio-Signature (only softphone calls stream unsigned)")
    if not await repo.claim_stream(rt.db, call_id, stream_sid, start.get("callSid") or call.twilio_call_sid,
                                   served_by=rt.instance_id):
        return await _refuse(ws, f"call {call_id}: already has a media stream or has ended")

    session = CallSession(
        rt, call_id, ws, serializer_factory=lambda events: TwilioMediaSerializer(stream_sid, events, label=f"call {call_id}")
    )
    agent = await repo.get_agent(rt.db, call.agent_id) if call.agent_id else None
    # Every log line of the call, pipecat's included (its tasks inherit this context), carries these in JSON logs.
    with logger.contextualize(call_id=call_id, stream_sid=stream_sid, agent=agent.name if agent else None):
        await session.run()
