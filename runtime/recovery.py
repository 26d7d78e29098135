"""Calls whose server died: every live call is marked alive by its process; a call left open by a crashed process
is closed `error_internal` with its turns kept (and its webhooks queued, as any close does).

Two ways to find one: at start-up a server closes the open calls recorded under its own name (it cannot be running
them: it has just started), and every server closes calls whose heartbeat is older than `call_stale_secs`, which
covers a process that never comes back.

The same sweep closes the calls whose media stream never came (`close_unstreamed`): an inbound call whose caller
hung up before the stream connected, or whose TwiML or socket failed on the way, is answered by nothing else. Kept
in the database rather than in a timer, it survives restarts and works whichever server answered the webhook."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from loguru import logger
from sqlalchemy import func, or_, select, update

from runtime import call_feed
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


# A call's stream token admits its stream for `stream_token_ttl_secs`; a start already on its way gets this long more.
UNSTREAMED_GRACE_SECS = 5
# Calls that only a media stream moves on, and why one whose stream never came ended. Outbound calls are not here:
# they may ring longer than a token lives, and the carrier's status callbacks (or a campaign's carrier check) end them.
NEVER_STREAMED = {
    "inbound": "the call's media stream never connected (the caller hung up first, or Twilio could not open the "
               "stream)",
    "softphone": "the softphone never opened its media stream",
}


async def close_unstreamed(rt: Runtime) -> int:
    """Close the inbound and softphone calls that have no media stream once their stream token has expired: none can
    come any more. Any server may close any such call; `end_call` closes each once."""
    ttl = rt.settings.stream_token_ttl_secs
    cutoff = utcnow() - timedelta(seconds=ttl + UNSTREAMED_GRACE_SECS)
    async with rt.db() as s:
        rows = list(await s.execute(select(Call.id, Call.direction).where(
            Call.ended_at.is_(None), Call.stream_sid.is_(None), Call.direction.in_(NEVER_STREAMED),
            Call.created_at < cutoff)))
    closed = 0
    for call_id, direction in rows:
        detail = f"{NEVER_STREAMED[direction]}; its stream token expired after {ttl} s"
        if await repo.end_call(rt.db, call_id, status="failed", reason=R.ERROR_CARRIER, detail=detail,
                               ended_by=R.ERROR_CARRIER.ended_by, unless_streamed=True):
            closed += 1
            logger.warning(f"call {call_id}: closed as error_carrier: {detail}")
            call_feed.publish(call_id, {"type": "ended", "reason": str(R.ERROR_CARRIER), "detail": detail})
    return closed


async def heartbeat(rt: Runtime) -> None:
    live = list(rt.sessions)
    if live:
        async with rt.db() as s:
            await s.execute(update(Call).where(Call.id.in_(live), Call.ended_at.is_(None)).values(heartbeat_at=utcnow()))
            await s.commit()


class CallKeeper:
    """Marks this process's calls alive and closes other processes' dead ones, and calls whose stream never came, off
    the calls' own paths."""

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
                await close_unstreamed(self.rt)
            except Exception:
                logger.exception("call keeper: heartbeat or stale-call sweep failed; trying again")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
