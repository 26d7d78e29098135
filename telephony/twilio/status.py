"""POST /telephony/twilio/status: Twilio's status callbacks for the calls we place.

Callbacks may come late, out of order or twice: each only moves the call forward (`repo.update_call_status`). A
final one closes a call whose media stream never started, with the reason the carrier gives; a call that had a
stream keeps its session's reason and only gains the duration. With answering machine detection, a call a machine
answered is hung up and closed `voicemail`.

Fields are checked before they reach the database (`telephony.twilio.fields`): a callback whose CallSid is no SID is
ignored; a CallDuration or AnsweredBy that does not fit is dropped with a warning, and the rest still recorded, since
Twilio does not retry and a lost final status would leave the call open.
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request, Response
from loguru import logger

from runtime.api.lookup import ROW_ID
from runtime.context import Runtime, runtime_of
from runtime.reasons import DisconnectionReason as R
from runtime.store import repo
from runtime.store.models import Call
from telephony.twilio import fields, signature
from telephony.twilio.rest import CarrierError, TwilioCalls

router = APIRouter(prefix="/telephony/twilio", tags=["telephony"])

# Why a call that never reached its media stream ended, by Twilio's final status.
UNCONNECTED_ENDINGS = {
    "busy": (R.DIAL_BUSY, "the line was busy"),
    "no-answer": (R.DIAL_NO_ANSWER, "nobody answered"),
    "failed": (R.DIAL_FAILED, "the carrier could not connect the call"),
    "canceled": (R.DIAL_FAILED, "the call was canceled before it was answered"),
    "completed": (R.ERROR_CARRIER, "the call was answered, but its media stream never reached this server"),
}

_FORM = {"type": "object", "properties": {k: {"type": "string"} for k in (
    "CallSid", "AccountSid", "CallStatus", "CallDuration", "AnsweredBy", "SequenceNumber")}}


def _machine(answered_by: str | None) -> bool:
    return bool(answered_by) and answered_by.startswith("machine")


def _optional(params: dict[str, str], name: str, check, about: str):
    """A field the callback may carry, checked; None (and a warning) when it does not fit, so that the rest of the
    callback, a final status above all, is still recorded."""
    raw = params.get(name)
    if not raw:
        return None
    try:
        return check(name, raw)
    except fields.BadField as exc:
        logger.warning(f"status callback for {about}: {exc}; that field is ignored")
        return None


async def _find(rt: Runtime, call_id: str | None, call_sid: str) -> Call | None:
    """The call the callback is about: by the id in its URL (the dialer puts it there), else by CallSid."""
    if call_id and ROW_ID.match(call_id):
        call = await repo.get_call(rt.db, call_id)
        if call is not None and call.twilio_call_sid not in (None, call_sid):
            logger.warning(f"status callback: call {call_id} is CallSid {call.twilio_call_sid}, not {call_sid}")
            return None
        return call
    return await repo.find_call_by_sid(rt.db, call_sid)


def _closing(reason: R, detail: str, *, unless_streamed: bool = True) -> repo.Closing:
    return repo.Closing("failed" if reason.is_error else "completed", reason, detail, reason.ended_by,
                        unless_streamed=unless_streamed)


async def _hang_up_on_machine(rt: Runtime, call: Call, call_sid: str, answered_by: str) -> None:
    detail = f"answered by a machine ({answered_by})"
    closing = _closing(R.VOICEMAIL, detail, unless_streamed=False)
    if not await repo.end_call(rt.db, call.id, status=closing.status, reason=closing.reason, detail=closing.detail,
                               ended_by=closing.ended_by):
        return  # already over, or a repeated callback
    logger.info(f"call {call.id}: {detail}; hanging up")
    session = rt.sessions.get(call.id)
    if session is not None:
        session.stop(R.VOICEMAIL, detail)  # the session tells Twilio to hang up as it ends
        return
    carrier = TwilioCalls(rt.settings)
    if not carrier.configured:
        logger.error(f"call {call.id}: no Twilio credentials to hang up with; the machine hears the agent")
        return
    try:
        await carrier.hang_up(call_sid)
    except CarrierError as exc:
        logger.error(f"call {call.id}: {exc}")


@router.post(
    "/status",
    status_code=204,
    response_class=Response,
    summary="Twilio call status callback (outbound calls)",
    responses={
        204: {"description": "Recorded (or ignored: stale, repeated, or for an unknown call)"},
        403: {"description": "Missing or invalid X-Twilio-Signature",
              "content": {"text/plain": {"schema": {"type": "string"}}}},
    },
    openapi_extra={"requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": _FORM}}}},
)
async def call_status(request: Request) -> Response:
    rt = runtime_of(request)
    params = signature.form_params(await request.body())
    url = signature.public_url(request, rt.settings)
    if not signature.is_valid(rt.settings, url, params, request.headers.get("x-twilio-signature")):
        logger.warning(f"status callback: invalid or missing X-Twilio-Signature for {url} "
                       f"(CallSid={fields.shown(params.get('CallSid'))})")
        return Response("invalid Twilio signature", status_code=403, media_type="text/plain")

    call_sid, status = params.get("CallSid", ""), params.get("CallStatus", "")
    # Twilio does not retry a refused callback, so refusing teaches nobody anything: log it and answer 204.
    if not call_sid or status not in repo.CARRIER_RANK:
        logger.warning(f"status callback: ignored (CallSid={fields.shown(call_sid)}, "
                       f"CallStatus={fields.shown(status)})")
        return Response(status_code=204)
    try:
        fields.sid("CallSid", call_sid)
    except fields.BadField as exc:  # not a SID Twilio sends; looking it up would only fail in the database
        logger.warning(f"status callback: ignored: {exc} (CallStatus={status})")
        return Response(status_code=204)
    call = await _find(rt, request.query_params.get("call_id"), call_sid)
    if call is None:
        logger.warning(f"status callback: no call for CallSid {call_sid} ({status})")
        return Response(status_code=204)

    about = f"call {call.id} (CallSid {call_sid}, {status})"
    answered_by = _optional(params, "AnsweredBy", partial(fields.word, limit=fields.ANSWERED_BY_MAX), about)
    duration = _optional(params, "CallDuration", partial(fields.count, maximum=fields.CALL_SECS_MAX), about)
    columns = dict(call_sid=call_sid, duration_secs=duration, answered_by=answered_by)
    closed = False
    if status in repo.CARRIER_FINAL:
        reason, detail = (R.VOICEMAIL, f"answered by a machine ({answered_by})") if _machine(answered_by) \
            else UNCONNECTED_ENDINGS[status]
        # A call whose media stream never started ends here, with the carrier's status, in one transaction.
        moved, closed = await repo.final_call_status(rt.db, call.id, status, _closing(reason, detail), **columns)
    else:
        moved = await repo.update_call_status(rt.db, call.id, status, **columns)
    logger.info(f"call {call.id}: carrier status {status}" + (f", answered by {answered_by}" if answered_by else "")
                + ("" if moved else " (not newer than what we had: kept)"))
    if status == "in-progress" and _machine(answered_by):
        await _hang_up_on_machine(rt, call, call_sid, answered_by)
    elif closed:
        logger.info(f"call {call.id}: ended before its media stream started: {reason} ({detail})")
    return Response(status_code=204)
