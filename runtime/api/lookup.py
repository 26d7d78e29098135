"""Finding a workspace's own rows: what every router does before touching a resource."""

from __future__ import annotations

import re
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from runtime.api.auth import Principal
from runtime.api.errors import ApiError, not_found

M = TypeVar("M")
ROW_ID = re.compile(r"^[0-9a-f]{32}$")


async def owned(s, model: type[M], row_id: str, p: Principal, what: str, *, lock: bool = False) -> M:
    """The row, or a 404 when it does not exist or belongs to another workspace (never a 403: existence is not
    confirmed across workspaces). `lock` serialises concurrent read-modify-writes on PostgreSQL."""
    if not ROW_ID.match(row_id):  # cannot exist; and a stray NUL would be a database error, not a 404
        raise not_found(what)
    q = select(model).where(model.id == row_id, model.workspace_id == p.workspace_id)
    row = await s.scalar(q.with_for_update() if lock else q)
    if row is None:
        raise not_found(what)
    return row


async def name_taken(s, model, workspace_id: str, name: str, except_id: str | None = None) -> bool:
    q = select(model.id).where(model.workspace_id == workspace_id, model.name == name)
    if except_id:
        q = q.where(model.id != except_id)
    return await s.scalar(q.limit(1)) is not None


async def commit_or_conflict(s, conflict: ApiError) -> None:
    """Commit a row whose name must be unique; a concurrent request that took the name between the check and the
    write makes this one the 409 it would have been."""
    try:
        await s.commit()
    except IntegrityError:
        await s.rollback()
        raise conflict from None
