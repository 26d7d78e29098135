"""Placing an outbound call through Twilio: the one seam the API routes and the batch engine share.

The call row is opened first (`queued`), so that a call Twilio may have placed is never unknown to us; then Twilio is
asked to dial with inline TwiML that connects the answered call to our media stream, exactly as the inbound webhook
answers. What happens next arrives as status callbacks (`telephony/twilio/status.py`) and, once answered, as the
media stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from loguru import logger

from config import variables as call_variables
from config.agent import AgentConfig
from config.settings import Settings
from runtime.context import Runtime
from runtime.phone import InvalidPhoneNumber, to_e164
from runtime.reasons import DisconnectionReason as R
from runtime.store import repo
from runtime.store.models import Agent, PhoneNumber
from telephony.twilio.rest import CarrierError, TwilioCalls
from telephony.twilio.webhook import STREAM_PATH, connect_twiml

STATUS_PATH = "/telephony/twilio/status"
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
# The stream token in the TwiML is minted when the call is placed, yet presented only once the callee has answered
# (and, with AMD, once Twilio has listened): ringing and detection must fit in the token's lifetime.
_TOKEN_MARGIN_SECS = 5
_AMD_TIMEOUT_SECS = 10
_MAX_RING_SECS = 60  # Twilio's own default


@dataclass
class PlacedCall:
    call_id: str
    request_id: str
    status: Literal["success", "failed"]
    twilio_call_sid: str | None
    reason: str | None
    to: str
    from_number: str


class MissingVariables(ValueError):
    """The agent's texts use `{{name}}`s the request gave no value for. Raised before anything is created."""

    def __init__(self, names: list[str]):
        self.names = names
        super().__init__(f"missing variables: {', '.join(names)} (the agent uses "
                         f"{', '.join('{{' + n + '}}' for n in names)})")


class NotDialable(ValueError):
    """The request cannot become a phone call as given; `field` names what is at fault."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class DialerNotConfigured(RuntimeError):
    """This server cannot place calls (credentials, public URL); `code` says which."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class AtCapacity(RuntimeError):
    """This server takes no more calls now (runtime/capacity.py); nothing was created. Try again later."""


def public_base(settings: Settings) -> str:
    """Where Twilio reaches us. Required: an outbound call has no incoming request to take a URL from."""
    if not settings.public_url:
        raise DialerNotConfigured("public_url_not_configured",
                                  "VOXLINE_PUBLIC_URL is not set: Twilio could not reach this server's media stream "
                                  "and status callbacks, so no outbound call can be placed")
    return settings.public_url.rstrip("/")


def check_configured(settings: Settings) -> str:
    """The public base URL, once sure this server can place calls at all."""
    if not TwilioCalls(settings).configured:
        raise DialerNotConfigured("twilio_not_configured",
                                  "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set: this server cannot place calls")
    return public_base(settings)


def ring_timeout_secs(settings: Settings, amd: bool) -> int:
    budget = settings.stream_token_ttl_secs - _TOKEN_MARGIN_SECS - (_AMD_TIMEOUT_SECS if amd else 0)
    return max(5, min(_MAX_RING_SECS, budget))


async def place_call(rt: Runtime, *, workspace_id: str, agent: Agent, line: PhoneNumber, to: str,
                     variables: dict | None = None, metadata: dict | None = None,
                     batch_id: str | None = None, batch_item_id: str | None = None) -> PlacedCall:
    """Open the call row and ask Twilio to dial `to` from `line` with `agent`.

    Raises (before anything is created) NotDialable, MissingVariables, DialerNotConfigured or AtCapacity. A carrier
    that refuses the call or cannot be reached is not an exception: the call is closed `dial_failed` and returned
    `failed`."""
    cfg = AgentConfig.model_validate(agent.config)
    if cfg.architecture == "text":
        raise NotDialable("agent_id", f"agent {cfg.name!r} is a text agent; text agents cannot take phone calls")
    try:
        to = to_e164(to)
    except InvalidPhoneNumber as exc:
        raise NotDialable("to", str(exc)) from None
    if lacking := call_variables.missing(cfg, variables):
        raise MissingVariables(lacking)
    base = check_configured(rt.settings)
    if why := await rt.admission.admit(f"outbound call to {to}"):
        raise AtCapacity(why)

    request_id = str(uuid.uuid4())
    call = await repo.create_call(
        rt.db, workspace_id=workspace_id, agent_id=agent.id, direction="outbound", from_number=line.number,
        to_number=to, status="queued", request_id=request_id, variables=_plain(variables),
        call_metadata=dict(metadata) if metadata else None, from_phone_number_id=line.id, batch_id=batch_id,
        batch_item_id=batch_item_id)
    rt.admission.admitted(call.id)
    stream_url = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + STREAM_PATH
    amd = cfg.call.answering_machine_detection
    try:
        call_sid = await TwilioCalls(rt.settings).place(
            to=to, from_=line.number, twiml=str(connect_twiml(stream_url, call.id, rt.tokens.mint(call.id))),
            # The call id rides in the URL (signed with it): callbacks can beat our storing of the CallSid.
            status_callback=f"{base}{STATUS_PATH}?call_id={call.id}", events=STATUS_EVENTS, machine_detection=amd,
            timeout_secs=ring_timeout_secs(rt.settings, amd),
            machine_detection_timeout_secs=_AMD_TIMEOUT_SECS if amd else None)
    except CarrierError as exc:
        reason = str(exc)
        await repo.end_call(rt.db, call.id, status="failed", reason=R.DIAL_FAILED, detail=reason,
                            ended_by=R.DIAL_FAILED.ended_by)
        logger.warning(f"call {call.id}: outbound {line.number} → {to} not placed: {reason}")
        return PlacedCall(call.id, request_id, "failed", None, reason, to, line.number)
    await repo.update_call_status(rt.db, call.id, "queued", call_sid=call_sid)
    logger.info(f"call {call.id}: outbound {line.number} → {to}, agent {cfg.name!r} ({agent.id}), CallSid {call_sid}"
                + (f", batch {batch_id} row {batch_item_id}" if batch_id else ""))
    return PlacedCall(call.id, request_id, "success", call_sid, None, to, line.number)


def _plain(variables: Mapping[str, Any] | None) -> dict[str, str] | None:
    return {str(k): str(v) for k, v in variables.items()} if variables else None
