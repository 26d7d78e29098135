"""/api/v1/phone: a workspace's phone numbers and which agent answers each.

A number is unique across workspaces, not within one: the carrier webhook finds the agent by the dialed number alone.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from runtime.api.auth import Caller, Principal
from runtime.api.errors import COMMON_ERRORS, ApiError, bad_request
from runtime.api.lookup import owned
from runtime.api.schemas import DataList, UTCDatetime
from runtime.context import runtime_of
from runtime.phone import InvalidPhoneNumber, to_e164
from runtime.store.models import Agent, PhoneNumber, utcnow

router = APIRouter(prefix="/api/v1", tags=["phone"], responses=COMMON_ERRORS)

Carrier = Literal["twilio"]


# --- shapes ---------------------------------------------------------------------------------------------------------

class _In(BaseModel):
    # Refusing unknown keys beats ignoring them: a client should not believe it changed something it did not.
    model_config = ConfigDict(extra="forbid")

    @field_validator("number", check_fields=False)
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            return to_e164(value)
        except InvalidPhoneNumber as exc:
            raise ValueError(str(exc)) from None

    @field_validator("label", check_fields=False)
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "\x00" in value:  # PostgreSQL cannot store it in a text column
            raise ValueError("must not contain NUL characters")
        try:
            value.encode("utf-8")  # JSON may carry a lone surrogate (\ud800), which no database can store
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (no lone surrogates)") from None
        return value


class PhoneIn(_In):
    number: str = Field(max_length=64, description="Any common notation; stored as E.164", examples=["+15550104242"])
    carrier: Carrier = "twilio"
    label: str | None = Field(default=None, max_length=120)


class PhoneUpdate(_In):
    # Defaults are not validated, so an absent field stays None while an explicit null is refused by the type.
    number: str = Field(  # type: ignore[assignment]
        default=None, max_length=64, description="Re-validated; stored as E.164")
    carrier: Carrier = Field(default=None)  # type: ignore[assignment]
    label: str | None = Field(default=None, max_length=120, description="null clears it")


class PhoneOut(BaseModel):
    id: str
    number: str = Field(description="E.164")
    carrier: str
    label: str | None
    agent_id: str | None = Field(description="The agent answering calls to this number; null when unmapped")
    created_at: UTCDatetime
    updated_at: UTCDatetime


class PhoneDeleted(BaseModel):
    id: str
    deleted: bool


class MappingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: str = Field(max_length=64)
    phone_number_id: str = Field(max_length=64)


class MappingOut(BaseModel):
    phone_number_id: str
    number: str
    agent_id: str | None


# --- queries --------------------------------------------------------------------------------------------------------

def _out(row: PhoneNumber) -> PhoneOut:
    return PhoneOut.model_validate(row, from_attributes=True)


def _mapping(row: PhoneNumber) -> MappingOut:
    return MappingOut(phone_number_id=row.id, number=row.number, agent_id=row.agent_id)


async def _own_number(s, p: Principal, phone_id: str, *, lock: bool = False) -> PhoneNumber:
    return await owned(s, PhoneNumber, phone_id, p, "phone number", lock=lock)


async def _own_agent(s, p: Principal, agent_id: str, *, lock: bool = False) -> Agent:
    return await owned(s, Agent, agent_id, p, "agent", lock=lock)


def _conflict(number: str) -> ApiError:
    # Deliberately not saying which workspace holds it.
    return ApiError(409, "conflict", f"number: {number} is already registered")


async def _number_taken(s, number: str, except_id: str | None = None) -> bool:
    q = select(PhoneNumber.id).where(PhoneNumber.number == number)
    if except_id:
        q = q.where(PhoneNumber.id != except_id)
    return await s.scalar(q.limit(1)) is not None


async def _commit(s, number: str) -> None:
    try:
        await s.commit()
    except IntegrityError:  # a concurrent request registered the number between our check and the write
        await s.rollback()
        raise _conflict(number) from None


# --- mapping routes: registered before /phone/{phone_id}, so `mapping` is never read as an id -----------------------

@router.post("/phone/mapping", response_model=MappingOut,
             summary="Map a number to an agent (replaces the number's previous mapping)")
async def map_number(body: MappingIn, p: Caller, request: Request) -> MappingOut:
    async with runtime_of(request).db() as s:
        # The agent's lock keeps a concurrent switch to `text` (refused for a mapped agent) from slipping past.
        agent = await _own_agent(s, p, body.agent_id, lock=True)
        row = await _own_number(s, p, body.phone_number_id, lock=True)
        if agent.architecture == "text":
            message = f"agent {agent.name!r} is a text agent; text agents cannot take phone calls"
            raise bad_request(f"agent_id: {message}", [{"field": "agent_id", "message": message}])
        row.agent_id, row.updated_at = agent.id, utcnow()
        await s.commit()
        return _mapping(row)


@router.get("/phone/mapping/agent/{agent_id}", response_model=DataList[MappingOut],
            summary="The numbers mapped to an agent")
async def agent_numbers(agent_id: str, p: Caller, request: Request) -> DataList[MappingOut]:
    async with runtime_of(request).db() as s:
        agent = await _own_agent(s, p, agent_id)
        rows = await s.scalars(select(PhoneNumber).where(PhoneNumber.agent_id == agent.id)
                               .order_by(PhoneNumber.number))
        return DataList[MappingOut](data=[_mapping(r) for r in rows])


@router.get("/phone/mapping/{phone_number_id}", response_model=MappingOut,
            summary="The agent a number is mapped to (agent_id null when unmapped)")
async def get_mapping(phone_number_id: str, p: Caller, request: Request) -> MappingOut:
    async with runtime_of(request).db() as s:
        return _mapping(await _own_number(s, p, phone_number_id))


@router.delete("/phone/mapping/{phone_number_id}", response_model=MappingOut,
               summary="Unmap a number: calls to it are refused until it is mapped again")
async def unmap_number(phone_number_id: str, p: Caller, request: Request) -> MappingOut:
    async with runtime_of(request).db() as s:
        row = await _own_number(s, p, phone_number_id, lock=True)
        if row.agent_id is not None:
            row.agent_id, row.updated_at = None, utcnow()
            await s.commit()
        return _mapping(row)


# --- numbers --------------------------------------------------------------------------------------------------------

@router.get("/phone", response_model=DataList[PhoneOut], summary="List the workspace's phone numbers")
async def list_numbers(p: Caller, request: Request) -> DataList[PhoneOut]:
    async with runtime_of(request).db() as s:
        rows = await s.scalars(select(PhoneNumber).where(PhoneNumber.workspace_id == p.workspace_id)
                               .order_by(PhoneNumber.created_at, PhoneNumber.id))
        return DataList[PhoneOut](data=[_out(r) for r in rows])


@router.post("/phone", response_model=PhoneOut, status_code=201,
             summary="Register a phone number (unmapped until mapped to an agent)")
async def create_number(body: PhoneIn, p: Caller, request: Request) -> PhoneOut:
    async with runtime_of(request).db() as s:
        if await _number_taken(s, body.number):
            raise _conflict(body.number)
        row = PhoneNumber(workspace_id=p.workspace_id, number=body.number, carrier=body.carrier, label=body.label)
        s.add(row)
        await _commit(s, body.number)
        return _out(row)


@router.get("/phone/{phone_id}", response_model=PhoneOut, summary="A phone number")
async def get_number(phone_id: str, p: Caller, request: Request) -> PhoneOut:
    async with runtime_of(request).db() as s:
        return _out(await _own_number(s, p, phone_id))


@router.patch("/phone/{phone_id}", response_model=PhoneOut, summary="Change a number's label, carrier or number")
async def update_number(phone_id: str, body: PhoneUpdate, p: Caller, request: Request) -> PhoneOut:
    async with runtime_of(request).db() as s:
        row = await _own_number(s, p, phone_id, lock=True)
        change = body.model_dump(exclude_unset=True)
        if "number" in change and await _number_taken(s, change["number"], except_id=row.id):
            raise _conflict(change["number"])
        for field, value in change.items():
            setattr(row, field, value)
        if change:
            row.updated_at = utcnow()
            await _commit(s, row.number)
        return _out(row)


@router.delete("/phone/{phone_id}", response_model=PhoneDeleted,
               summary="Remove a number; its mapping goes with it")
async def delete_number(phone_id: str, p: Caller, request: Request) -> PhoneDeleted:
    async with runtime_of(request).db() as s:
        row = await _own_number(s, p, phone_id, lock=True)
        await s.delete(row)
        await s.commit()
    return PhoneDeleted(id=phone_id, deleted=True)
