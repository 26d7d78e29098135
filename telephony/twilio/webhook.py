"""POST /telephony/twilio/voice: Twilio's incoming-call webhook. Verifies the signature, finds the agent mapped to
the dialed number, opens the call record and answers TwiML that connects the call to our media stream.

`From` and `To` may be SIP addresses (calls from or to a Twilio SIP domain); `To`'s user part is the number looked
up. Values that cannot be stored (a NUL, longer than the columns) are refused with spoken TwiML, never a 500. A
server at capacity rejects the call busy (runtime/capacity.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from loguru import logger
from twilio.twiml.voice_response import Connect, VoiceResponse

from config.agent import AgentConfig
from runtime.context import runtime_of
from runtime.phone import InvalidPhoneNumber, to_e164
from runtime.reasons import DisconnectionReason
from runtime.store import repo
from telephony.twilio import fields, signature

router = APIRouter(prefix="/telephony/twilio", tags=["telephony"])
STREAM_PATH = "/telephony/twilio/stream"


def _twiml(response: VoiceResponse, status: int = 200) -> Response:
    return Response(content=str(response), media_type="application/xml", status_code=status)


def refuse(message: str) -> Response:
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return _twiml(response)


def reject_busy() -> VoiceResponse:
    """A full server: the caller hears a busy tone, and Twilio neither answers nor bills the call."""
    response = VoiceResponse()
    response.reject(reason="busy")
    return response


def connect_twiml(stream_url: str, call_id: str, token: str) -> VoiceResponse:
    """`<Connect><Stream>` to our socket; `<Hangup/>` after it so that closing the socket ends the call."""
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    stream.parameter(name="call_id", value=call_id)
    stream.parameter(name="token", value=token)
    response.append(connect)
    response.hangup()
    return response


def stream_url(request: Request) -> str:
    rt = runtime_of(request)
    base = rt.settings.public_url.rstrip("/") if rt.settings.public_url else str(request.base_url).rstrip("/")
    return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + STREAM_PATH


def dialed_number(to: str) -> str:
    """The number a call was placed to: `To` itself, or the user part of a SIP address (a call to a Twilio SIP
    domain arrives as `To=sip:+15550100000@example.sip.twilio.com`)."""
    scheme, colon, rest = to.partition(":")
    if colon and scheme.lower() in ("sip", "sips"):
        return rest.split("@", 1)[0].split(";", 1)[0]
    return to


_FORM = {"type": "object", "properties": {k: {"type": "string"} for k in ("CallSid", "AccountSid", "From", "To")}}


@router.post(
    "/voice",
    response_class=Response,
    summary="Twilio incoming-call webhook",
    responses={
        200: {"description": "TwiML: connect to the media stream; a spoken refusal and hang-up; or, when the server "
                             "is full (VOXLINE_MAX_CALLS, VOXLINE_SHED_LOOP_LAG_MS), `<Reject reason=\"busy\"/>`",
              "content": {"application/xml": {"schema": {"type": "string"}}}},
        403: {"description": "Missing or invalid X-Twilio-Signature",
              "content": {"text/plain": {"schema": {"type": "string"}}}},
    },
    openapi_extra={"requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": _FORM}}}},
)
async def voice(request: Request) -> Response:
    rt = runtime_of(request)
    params = signature.form_params(await request.body())
    url = signature.public_url(request, rt.settings)
    if not signature.is_valid(rt.settings, url, params, request.headers.get("x-twilio-signature")):
        logger.warning(f"voice webhook: invalid or missing X-Twilio-Signature for {url} "
                       f"(CallSid={fields.shown(params.get('CallSid'))})")
        return Response("invalid Twilio signature", status_code=403, media_type="text/plain")

    call_sid, caller, dialed = params.get("CallSid") or None, params.get("From") or None, params.get("To", "")
    try:
        call_sid = call_sid and fields.sid("CallSid", call_sid)
        caller = caller and fields.address("From", caller)
        dialed = dialed and fields.address("To", dialed)
    except fields.BadField as exc:
        logger.warning(f"voice webhook: call refused: {exc}")
        return refuse("Sorry, this call cannot be connected. Goodbye.")
    try:
        to = to_e164(dialed_number(dialed))
    except InvalidPhoneNumber as exc:
        logger.warning(f"voice webhook: call {call_sid}: bad To number: {exc}")
        return refuse("Sorry, this number cannot be reached. Goodbye.")

    agent = await repo.agent_for_number(rt.db, to)
    if agent is None:
        logger.warning(f"voice webhook: call {call_sid} to {to}: no agent is mapped to this number; hanging up")
        return refuse("Sorry, this number is not in service. Goodbye.")

    cfg = AgentConfig.model_validate(agent.config)
    columns = dict(
        workspace_id=agent.workspace_id, agent_id=agent.id, direction="inbound", from_number=caller,
        to_number=to if dialed_number(dialed) == dialed else dialed,  # a SIP address is kept whole, as sent
        twilio_call_sid=call_sid,
    )
    if cfg.architecture == "text":
        call = await repo.create_call(rt.db, status="failed", **columns)
        detail = f"agent {cfg.name!r} ({cfg.architecture}) cannot take phone calls"
        await repo.end_call(rt.db, call.id, status="failed", reason=DisconnectionReason.ERROR_INTERNAL, detail=detail)
        logger.warning(f"voice webhook: call {call.id}: {detail}")
        return refuse("Sorry, this agent cannot take phone calls. Goodbye.")

    if why := await rt.admission.admit(f"inbound {caller} → {to} (CallSid {call_sid})"):
        call = await repo.create_call(rt.db, status="failed", **columns)
        await repo.end_call(rt.db, call.id, status="failed", reason=DisconnectionReason.CONCURRENCY_LIMIT,
                            detail=why)
        return _twiml(reject_busy())

    call = await repo.create_call(rt.db, status="ringing", **columns)
    rt.admission.admitted(call.id)
    logger.info(f"call {call.id}: inbound {caller} → {to}, agent {cfg.name!r} ({agent.id}), CallSid {call_sid}")
    return _twiml(connect_twiml(stream_url(request), call.id, rt.tokens.mint(call.id)))
