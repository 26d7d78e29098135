"""Placing calls: Kupe's `POST /api/call/create_call` (query parameters) and `POST /api/v1/calls` (JSON, with
variables and metadata), both answered in Kupe's shape. Reading calls is runtime/api/routes/analytics.py's.

A carrier that refuses the call is not an HTTP error (Kupe answers 200 `"status": "failed"` with the ids, so the
caller can trace it); what we refuse before dialing is.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, field_validator
from sqlalchemy import case, select

from runtime.api.auth import Caller, Principal
from runtime.api.errors import COMMON_ERRORS, ApiError, ErrorResponse, bad_request
from runtime.api.lookup import owned
from runtime.context import runtime_of
from runtime.phone import InvalidPhoneNumber, to_e164
from runtime.store.models import Agent, PhoneNumber
from runtime.capacity import RETRY_AFTER_SECS
from telephony.twilio.dialer import (
    AtCapacity, DialerNotConfigured, MissingVariables, NotDialable, PlacedCall, place_call)

router = APIRouter(tags=["calls"], responses=COMMON_ERRORS)

_PLACING_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "This server cannot place calls (`twilio_not_configured`, "
                                                 "`public_url_not_configured`), or not now: `at_capacity` (it is "
                                                 "full: VOXLINE_MAX_CALLS, VOXLINE_SHED_LOOP_LAG_MS; see Retry-After)"},
}
MAX_VARIABLES = 100
PLACEHOLDER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")  # as in config/variables.py
MAX_VALUE_CHARS = 1000


# --- shapes ---------------------------------------------------------------------------------------------------------

def _unstorable(value: Any, where: str) -> str | None:
    """Why a JSON value cannot be stored (PostgreSQL refuses NUL and lone surrogates), or None."""
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where}: must not contain NUL characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where}: must be valid Unicode text (no lone surrogates)"
    elif isinstance(value, dict):
        return next((why for k, v in value.items() if (why := _unstorable(k, where) or _unstorable(v, where))), None)
    elif isinstance(value, list):
        return next((why for v in value if (why := _unstorable(v, where))), None)
    return None


class CallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str = Field(max_length=64, description="The number to call; any common notation, dialed as E.164",
                    examples=["+15550104242"])
    agent_id: str = Field(max_length=64)
    from_phone_number_id: str | None = Field(
        default=None, max_length=64,
        description="The workspace's line to call from; default: its first line mapped to the agent, else its first")
    variables: dict[str, StrictStr | StrictInt | StrictFloat] = Field(
        default_factory=dict, description="Values for the agent's {{name}} placeholders; each one it uses is required")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Stored with the call, returned as given")

    @field_validator("variables")
    @classmethod
    def _variables(cls, value: dict) -> dict[str, str]:
        if len(value) > MAX_VARIABLES:
            raise ValueError(f"at most {MAX_VARIABLES} variables")
        out = {}
        for name, v in value.items():
            if not PLACEHOLDER_NAME.match(name):
                raise ValueError(f"{name[:80]!r} is not a variable name (letters, digits and _, not starting with a "
                                 "digit, at most 64 characters)")
            if isinstance(v, float) and not math.isfinite(v):  # 1e400 in JSON is inf: never a value anyone meant
                raise ValueError(f"{name}: must be a finite number")
            text = str(v)
            if len(text) > MAX_VALUE_CHARS:
                raise ValueError(f"{name}: longer than {MAX_VALUE_CHARS} characters")
            if why := _unstorable(text, name):
                raise ValueError(why)
            out[name] = text
        return out

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict) -> dict:
        if why := _unstorable(value, "metadata"):
            raise ValueError(why)
        return value


class CallPlacedOut(BaseModel):
    status: Literal["success", "failed"] = Field(description="`failed`: the carrier refused or could not be reached")
    request_id: str
    call_session_id: str = Field(description="The call's id (GET /api/v1/calls/{id})")
    telephony_provider: Literal["twilio"] = "twilio"
    target_number: str = Field(description="E.164")
    from_phone_number: str
    telephony_leg_id: str | None = Field(description="Twilio's CallSid; null when the call was not placed")
    reason: str | None = Field(default=None, description="Why the call failed")


# --- placing --------------------------------------------------------------------------------------------------------

def _number(raw: str, field: str) -> str:
    try:
        return to_e164(raw)
    except InvalidPhoneNumber as exc:
        raise bad_request(f"{field}: {exc}", [{"field": field, "message": str(exc)}]) from None


async def _line(s, p: Principal, agent: Agent, line_id: str | None, field: str) -> PhoneNumber:
    if line_id:
        return await owned(s, PhoneNumber, line_id, p, "phone number")
    line = await s.scalar(
        select(PhoneNumber).where(PhoneNumber.workspace_id == p.workspace_id)
        .order_by(case((PhoneNumber.agent_id == agent.id, 0), else_=1), PhoneNumber.created_at, PhoneNumber.id)
        .limit(1))
    if line is None:
        message = "the workspace has no phone number to call from; register one (POST /api/v1/phone)"
        raise ApiError(400, "no_phone_number", f"{field}: {message}", [{"field": field, "message": message}])
    return line


async def _place(request: Request, p: Principal, *, to: str, agent_id: str, line_id: str | None,
                 fields: dict[str, str], variables: dict | None = None,
                 metadata: dict | None = None) -> CallPlacedOut:
    """`fields` maps our names (to, agent_id, line, variables) to the names the caller used."""
    rt = runtime_of(request)
    to = _number(to, fields["to"])
    async with rt.db() as s:
        agent = await owned(s, Agent, agent_id, p, "agent")
        line = await _line(s, p, agent, line_id, fields["line"])
    try:
        placed: PlacedCall = await place_call(rt, workspace_id=p.workspace_id, agent=agent, line=line, to=to,
                                              variables=variables, metadata=metadata)
    except NotDialable as exc:
        field = fields.get(exc.field, exc.field)
        raise bad_request(f"{field}: {exc.message}", [{"field": field, "message": exc.message}]) from None
    except MissingVariables as exc:
        where = fields["variables"]
        raise ApiError(400, "missing_variables", f"{where}: {exc}",
                       [{"field": f"{where}.{name}", "message": f"the agent uses {{{{{name}}}}}; give it a value"}
                        for name in exc.names]) from None
    except DialerNotConfigured as exc:
        raise ApiError(503, exc.code, str(exc)) from None
    except AtCapacity as exc:
        raise ApiError(503, "at_capacity", f"{exc}; nothing was dialed: try again later",
                       headers={"Retry-After": str(RETRY_AFTER_SECS)}) from None
    return CallPlacedOut(status=placed.status, request_id=placed.request_id, call_session_id=placed.call_id,
                         target_number=placed.to, from_phone_number=placed.from_number,
                         telephony_leg_id=placed.twilio_call_sid, reason=placed.reason)


@router.post("/api/call/create_call", response_model=CallPlacedOut, responses=_PLACING_ERRORS,
             summary="Place an outbound call (Kupe): query parameters, answered 200 even when the carrier refuses")
async def create_call(
    p: Caller, request: Request,
    phoneNumber: Annotated[str, Query(max_length=64, description="Destination, E.164 (URL-encode + as %2B)")],
    agent_id: Annotated[str, Query(max_length=64)],
    phone_number_id: Annotated[str | None, Query(max_length=64, description="The line to call from")] = None,
) -> CallPlacedOut:
    return await _place(request, p, to=phoneNumber, agent_id=agent_id, line_id=phone_number_id,
                        fields={"to": "phoneNumber", "line": "phone_number_id", "variables": "variables"})


@router.post("/api/v1/calls", response_model=CallPlacedOut, responses=_PLACING_ERRORS,
             summary="Place an outbound call, with variables for the agent's {{placeholders}} and metadata")
async def create_call_v1(body: CallIn, p: Caller, request: Request) -> CallPlacedOut:
    return await _place(request, p, to=body.to, agent_id=body.agent_id, line_id=body.from_phone_number_id,
                        variables=body.variables, metadata=body.metadata,
                        fields={"to": "to", "line": "from_phone_number_id", "variables": "variables"})
