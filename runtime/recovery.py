"""Calls whose server died: every live call is marked alive by its process; a call left open by a crashed process
is closed `error_internal` with its turns kept (and its webhooks queued, as any close does).

Two ways to find one: at start-up a server closes the open calls recorded under its own name (it cannot be running
them: it has just started), and every server closes calls whose heartbeat is older than `call_stale_secs`, which
covers a process that never comes back."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from loguru import logger
from sqlalchemy import func, or_, select, update

from runtime.context import Runtime
from runtime.reasons import DisconnectionReason as R
from runtime.store import repo
from runtime.store.models import Call, utcnow

CRASH_DETAIL = "the server running the call stopped without ending it"


async def _close(rt: Runtime, call_ids: list[str], why: str) -> int:
    closed = 0
    for call_id in call_ids:
        if await repo.end_call(rt.db, call_id, status="failed", reason=R.ERROR_INTERNAL, detail=why, ended_by="system"):
            closed += 1
            logger.warning(f"call {call_id}: closed as error_internal: {why}")
    return closed


async def close_own_orphans(rt: Runtime) -> int:
    async with rt.db() as s:
        ids = list(await s.scalars(select(Call.id).where(Call.served_by == rt.instance_id, Call.ended_at.is_(None))))
    return await _close(rt, ids, f"{CRASH_DETAIL} (found when {rt.instance_id} restarted)")


async def close_stale(rt: Runtime) -> int:
    cutoff = utcnow() - timedelta(seconds=rt.settings.call_stale_secs)
    async with rt.db() as s:
        ids = list(await s.scalars(select(Call.id).where(
            Call.ended_at.is_(None), Call.stream_sid.is_not(None),
            func.coalesce(Call.heartbeat_at, Call.started_at, Call.created_at) < cutoff,
            or_(Call.served_by.is_(None), Call.served_by != rt.instance_id))))
    return await _close(rt, ids, f"{CRASH_DETAIL} (no heartbeat for {rt.settings.call_stale_secs:.0f} s)")


async def heartbeat(rt: Runtime) -> None:
    live = list(rt.sessions)
    if live:
        async with rt.db() as s:
            await s.execute(update(Call).where(Call.id.in_(live), Call.ended_at.is_(None)).values(heartbeat_at=utcnow()))
            await s.commit()


class CallKeeper:
    """Marks this process's calls alive and closes other processes' dead ones, off the calls' own paths."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if n := await close_own_orphans(self.rt):
            logger.warning(f"closed {n} call(s) left open by a previous run of {self.rt.instance_id}")
        self._task = asyncio.create_task(self._run(), name="call-keeper")

    async def _run(self) -> None:
        every = self.rt.settings.call_heartbeat_secs
        while True:
            await asyncio.sleep(every)
            try:
                await heartbeat(self.rt)
                await close_stale(self.rt)
            except Exception:
                logger.exception("call keeper: heartbeat or stale-call sweep failed; trying again")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
