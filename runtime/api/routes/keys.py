"""/api/v1/me and /api/v1/api-keys (Kupe's shape): keys are created, listed, renamed and revoked by admins."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy import select

from config.text import no_nul
from runtime.api.auth import Admin, Caller, create_key
from runtime.api.errors import COMMON_ERRORS
from runtime.api.lookup import owned
from runtime.api.schemas import DataList, UTCDatetime
from runtime.context import runtime_of
from runtime.store.models import ApiKey, utcnow

router = APIRouter(prefix="/api/v1", tags=["keys"], responses=COMMON_ERRORS)


class WorkspaceOut(BaseModel):
    id: str
    name: str


class KeyIdentity(BaseModel):
    id: str
    name: str
    role: Literal["admin", "developer"]


class MeOut(BaseModel):
    workspace: WorkspaceOut
    key: KeyIdentity


class KeyOut(BaseModel):
    id: str
    name: str
    role: Literal["admin", "developer"]
    prefix: str = Field(description="The first characters of the key, to recognise it")
    created_at: UTCDatetime
    last_used_at: UTCDatetime | None
    revoked_at: UTCDatetime | None


class KeyCreated(KeyOut):
    api_key: str | None = Field(
        description="The secret. Shown this once and never stored (only its hash is); null in an idempotent replay"
    )


# A text column: PostgreSQL cannot store NUL in one.
KeyName = Annotated[str, Field(max_length=120), AfterValidator(no_nul)]


class KeyCreate(BaseModel):
    name: KeyName = ""
    role: Literal["admin", "developer"] = "developer"


class KeyRename(BaseModel):
    name: KeyName


def _out(key: ApiKey) -> KeyOut:
    return KeyOut.model_validate(key, from_attributes=True)


@router.get("/me", response_model=MeOut, summary="Who this key is")
async def me(p: Caller) -> MeOut:
    return MeOut(workspace=WorkspaceOut(id=p.workspace_id, name=p.workspace_name),
                 key=KeyIdentity(id=p.key_id, name=p.key_name, role=p.role))


@router.post("/api-keys", response_model=KeyCreated, status_code=201, summary="Create a key (admin)")
async def create(body: KeyCreate, p: Admin, request: Request) -> KeyCreated:
    key, secret = await create_key(runtime_of(request).db, p.workspace_id, body.name, body.role)
    return KeyCreated(**_out(key).model_dump(), api_key=secret)


@router.get("/api-keys", response_model=DataList[KeyOut], summary="List the workspace's keys (admin; never secrets)")
async def list_keys(p: Admin, request: Request) -> DataList[KeyOut]:
    async with runtime_of(request).db() as s:
        rows = await s.scalars(select(ApiKey).where(ApiKey.workspace_id == p.workspace_id).order_by(ApiKey.created_at))
        return DataList[KeyOut](data=[_out(k) for k in rows])


async def _own_key(p, key_id: str, s) -> ApiKey:
    return await owned(s, ApiKey, key_id, p, "API key")


@router.patch("/api-keys/{key_id}", response_model=KeyOut, summary="Rename a key (admin)")
async def rename(key_id: str, body: KeyRename, p: Admin, request: Request) -> KeyOut:
    async with runtime_of(request).db() as s:
        key = await _own_key(p, key_id, s)
        key.name = body.name
        await s.commit()
        return _out(key)


@router.delete("/api-keys/{key_id}", response_model=KeyOut, summary="Revoke a key (admin); it stops working at once")
async def revoke(key_id: str, p: Admin, request: Request) -> KeyOut:
    async with runtime_of(request).db() as s:
        key = await _own_key(p, key_id, s)
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            await s.commit()
        return _out(key)
