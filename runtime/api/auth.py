"""API keys: generation, hashing, and the request dependencies that turn a key into a workspace principal.

Every lookup goes to the store (indexed by the key's hash), so a revoked key is refused on the very next request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import Depends, Request
from sqlalchemy import select, update

from runtime.api.errors import ApiError
from runtime.context import runtime_of
from runtime.store.models import ApiKey, Workspace, utcnow

Role = Literal["admin", "developer"]
KEY_PREFIX = "vxl_"
_LAST_USED_EVERY = timedelta(minutes=1)  # bounds writes: at most one per key per minute


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> tuple[str, str, str]:
    """(secret, display prefix, hash). The secret is shown once and never stored."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, secret[:12], hash_key(secret)


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


@dataclass(frozen=True)
class Principal:
    workspace_id: str
    workspace_name: str
    key_id: str
    key_name: str
    role: Role


async def principal(request: Request) -> Principal:
    secret = presented_key(request)
    if not secret:
        raise ApiError(401, "missing_api_key", "send an API key in x-api-key or Authorization: Bearer")
    rt = runtime_of(request)
    async with rt.db() as s:
        row = (await s.execute(
            select(ApiKey, Workspace.name).join(Workspace, Workspace.id == ApiKey.workspace_id)
            .where(ApiKey.key_hash == hash_key(secret))
        )).first()
        if row is None or row[0].revoked_at is not None:
            raise ApiError(401, "invalid_api_key", "the API key is invalid or has been revoked")
        key, workspace_name = row
        now = utcnow()
        last = key.last_used_at
        if last is None or (now - (last if last.tzinfo else last.replace(tzinfo=now.tzinfo))) > _LAST_USED_EVERY:
            await s.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
            await s.commit()
    found = Principal(key.workspace_id, workspace_name, key.id, key.name, key.role)  # type: ignore[arg-type]
    request.state.principal = found
    return found


async def admin(p: Annotated[Principal, Depends(principal)]) -> Principal:
    if p.role != "admin":
        raise ApiError(403, "forbidden", "this needs an admin key")
    return p


Caller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]


async def create_key(db, workspace_id: str, name: str, role: Role) -> tuple[ApiKey, str]:
    """Store a new key for the workspace; returns the row and the secret (shown once)."""
    secret, prefix, key_hash = generate_key()
    async with db() as s:
        key = ApiKey(workspace_id=workspace_id, name=name, role=role, prefix=prefix, key_hash=key_hash)
        s.add(key)
        await s.commit()
    return key, secret
