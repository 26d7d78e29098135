"""The Media Streams socket: reads `connected`/`start`, admits the stream with its signed per-call token, then
hands the socket to a call session. Anything before `start` other than `connected` is logged and dropped.

With TWILIO_AUTH_TOKEN set, the upgrade must carry a valid X-Twilio-Signature, except for softphone calls
(direction `softphone`, opened by `POST /api/v1/softphone/calls`): a browser cannot set headers on a WebSocket, so an
unsigned upgrade is let through to `start` and then admitted only for such a call, on its signed, short-lived
per-call token. A signature that is present but wrong is refused at once, as before.

Once the token has admitted the stream, its `streamSid` and `callSid` are checked before they reach the database
(`telephony.twilio.fields`): a bad one is refused with 1008, a database error with 1011, and either way the call is
closed saying why, instead of the socket dropping and the call waiting for a stream that will never come."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from loguru import logger

from runtime import call_feed
from runtime.call_session import CallSession
from runtime.context import Runtime, runtime_of
from runtime.reasons import DisconnectionReason as R
from runtime.store import repo
from runtime.store.models import Call
from runtime.tokens import TokenError
from telephony.twilio import fields, signature
from telephony.twilio.serializer import ProtocolWarnings, TwilioMediaSerializer, parse_message

router = APIRouter(prefix="/telephony/twilio", tags=["telephony"])

POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
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


async def _refuse(ws: WebSocket, why: str, code: int = POLICY_VIOLATION) -> None:
    logger.warning(f"media stream refused: {why}")
    try:
        # A close reason is at most 123 bytes of UTF-8.
        await ws.close(code=code, reason=why.encode()[:120].decode("utf-8", "ignore"))
    except RuntimeError:
        pass  # already closed by the peer


async def _refuse_call(ws: WebSocket, rt: Runtime, call_id: str, reason: R, why: str,
                       code: int = POLICY_VIOLATION) -> None:
    """Refuse the stream of a call whose token checked out, and close the call: it cannot go on without its stream,
    and left open it would later be closed as one whose stream never came. Closed before the socket, so that the
    record is final when the peer sees the close frame."""
    detail = f"its media stream was refused: {why}"
    try:
        if await repo.end_call(rt.db, call_id, status="failed", reason=reason, detail=detail, ended_by=reason.ended_by,
                               unless_streamed=True):
            call_feed.publish(call_id, {"type": "ended", "reason": str(reason), "detail": detail})
    except Exception:
        logger.exception(f"call {call_id}: not closed after its stream was refused (the unstreamed-call sweep will)")
    await _refuse(ws, f"call {call_id}: {why}", code)


def _sids(start_msg: dict, call: Call) -> tuple[str, str | None]:
    """(streamSid, CallSid) of a `start`, checked before they reach the database; raises fields.BadField. A start
    without a callSid (a softphone's) keeps the one the call has."""
    start = start_msg["start"]
    stream_sid = fields.sid("streamSid", start.get("streamSid") or start_msg.get("streamSid"))
    call_sid = start.get("callSid")
    return stream_sid, fields.sid("callSid", call_sid) if call_sid not in (None, "") else call.twilio_call_sid


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
    if not isinstance(call_id, str) or not isinstance(token, str):
        return await _refuse(ws, "start lacks call_id or token")
    try:
        rt.tokens.verify(token, call_id)
    except TokenError as exc:
        return await _refuse(ws, f"call {call_id[:40]}: {exc}")
    # From here on the call is known, so whatever the database raises, the peer gets a close frame (not a dropped
    # socket) and the call a reason.
    try:
        call = await repo.get_call(rt.db, call_id)
    except Exception:
        logger.exception(f"call {call_id}: media stream: could not read the call")
        return await _refuse(ws, f"call {call_id}: database error", INTERNAL_ERROR)
    if call is None:
        return await _refuse(ws, f"call {call_id}: unknown call")
    if not signed and call.direction != SOFTPHONE:
        return await _refuse(ws, f"call {call_id}: missing X-Twilio-Signature (only softphone calls stream unsigned)")
    try:
        stream_sid, call_sid = _sids(start_msg, call)
    except fields.BadField as exc:
        return await _refuse_call(ws, rt, call_id, R.ERROR_CARRIER, f"bad start: {exc}")
    try:
        claimed = await repo.claim_stream(rt.db, call_id, stream_sid, call_sid, served_by=rt.instance_id)
    except Exception:
        logger.exception(f"call {call_id}: media stream: could not attach it to the call")
        return await _refuse_call(ws, rt, call_id, R.ERROR_INTERNAL, "database error while attaching the stream",
                                  INTERNAL_ERROR)
    if not claimed:
        return await _refuse(ws, f"call {call_id}: already has a media stream or has ended")

    session = CallSession(
        rt, call_id, ws, serializer_factory=lambda events: TwilioMediaSerializer(stream_sid, events, label=f"call {call_id}")
    )
    agent = await repo.get_agent(rt.db, call.agent_id) if call.agent_id else None
    # Every log line of the call, pipecat's included (its tasks inherit this context), carries these in JSON logs.
    with logger.contextualize(call_id=call_id, stream_sid=stream_sid, agent=agent.name if agent else None):
        await session.run()
