"""The campaign engine's queries: claiming rows to dial, following their calls, and taking over rows whose claiming
process went away. Every state change is a conditional update, so any number of server processes can run them.

A claim is a lease: the process that claimed a `calling` row renews `updated_at` while it follows the row's call
(`renew`), and releases its rows when it stops (`release`: `claimed_by` cleared). A row whose claim is released
or has not been renewed for `LEASE` is taken over by whichever process sees it first (`adopt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from loguru import logger
from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from runtime.batch.outcomes import outcome
from runtime.records import iso
from runtime.store.models import Agent, BatchCall, BatchItem, Call, PhoneNumber, utcnow
from runtime.webhooks import outbox

LEASE = timedelta(seconds=30)
PENDING = ("not_started", "calling")


@dataclass
class Claim:
    """Rows one process may now dial, with what dialing them needs."""

    batch: BatchCall
    agent: Agent
    line: PhoneNumber
    items: list[BatchItem]


@dataclass
class Adopted:
    item_id: str
    call_id: str | None


async def active_batches(db: async_sessionmaker) -> list[str]:
    async with db() as s:
        return list(await s.scalars(select(BatchCall.id).where(BatchCall.status == "in_progress")
                                    .order_by(BatchCall.started_at, BatchCall.id)))


def _unusable(agent: Agent | None, line: PhoneNumber | None) -> str | None:
    if agent is None:
        return "the batch's agent was deleted"
    if agent.architecture == "text":
        return f"agent {agent.name!r} is a text agent; text agents cannot take phone calls"
    if line is None:
        return "the batch's caller phone number was deleted"
    return None


async def claim(db: async_sessionmaker, batch_id: str, worker: str, most: int | None = None) -> Claim | None:
    """Mark up to `batch_size - calling` (and `most`: the server's room) of the batch's not_started rows `calling`,
    owned by `worker`, in one transaction. On PostgreSQL the batch row is locked first (FOR UPDATE), so concurrent
    claimers of one batch take turns and their claims never add up past batch_size; SKIP LOCKED keeps a claimer off
    rows another transaction is writing. SQLite has one writer at a time, which gives the same guarantee."""
    async with db() as s:
        batch = await s.scalar(select(BatchCall).where(BatchCall.id == batch_id, BatchCall.status == "in_progress")
                               .with_for_update())
        if batch is None:
            return None
        agent = await s.get(Agent, batch.agent_id) if batch.agent_id else None
        line = await s.get(PhoneNumber, batch.caller_phone_id) if batch.caller_phone_id else None
        if why := _unusable(agent, line):
            # Nothing of this batch can be dialed any more: end its waiting rows now rather than a few per tick.
            await s.execute(update(BatchItem).where(BatchItem.batch_id == batch_id, BatchItem.status == "not_started")
                            .values(status="failed", error_message=why, updated_at=utcnow()))
            await s.commit()
            return None
        calling = await s.scalar(select(func.count()).select_from(BatchItem)
                                 .where(BatchItem.batch_id == batch_id, BatchItem.status == "calling"))
        room = batch.batch_size - (calling or 0)
        if most is not None:
            room = min(room, most)
        items: list[BatchItem] = []
        if room > 0:
            items = list(await s.scalars(
                select(BatchItem).where(BatchItem.batch_id == batch_id, BatchItem.status == "not_started")
                .order_by(BatchItem.created_at, BatchItem.id).limit(room).with_for_update(skip_locked=True)))
        if items:
            now = utcnow()
            await s.execute(update(BatchItem).where(BatchItem.id.in_([i.id for i in items]))
                            .values(status="calling", claimed_by=worker, attempts=BatchItem.attempts + 1,
                                    updated_at=now))
        await s.commit()
        return Claim(batch, agent, line, items) if items else None


async def record_call(db: async_sessionmaker, item_id: str, call_id: str | None, failure: str | None) -> None:
    """What dialing a row gave: the call to follow, or (with `failure`) a row that is over."""
    values: dict = {"call_id": call_id, "updated_at": utcnow()}
    if failure is not None:
        values.update(status="failed", error_message=failure[:2000])
    async with db() as s:
        await s.execute(update(BatchItem).where(BatchItem.id == item_id, BatchItem.status == "calling")
                        .values(**values))
        await s.commit()


async def unclaim(db: async_sessionmaker, item_id: str) -> None:
    """A row claimed but not dialed (the server filled up meanwhile): back to waiting, as if never claimed."""
    async with db() as s:
        await s.execute(update(BatchItem).where(BatchItem.id == item_id, BatchItem.status == "calling",
                                                BatchItem.call_id.is_(None))
                        .values(status="not_started", claimed_by=None, attempts=BatchItem.attempts - 1,
                                updated_at=utcnow()))
        await s.commit()


async def fail(db: async_sessionmaker, item_id: str, message: str) -> None:
    await record_call(db, item_id, None, message)


async def call_for_item(db: async_sessionmaker, item_id: str) -> str | None:
    """The call the dialer opened for a row, if it got that far (it tags each call with its batch row)."""
    async with db() as s:
        return await s.scalar(select(Call.id).where(Call.batch_item_id == item_id)
                              .order_by(Call.created_at.desc()).limit(1))


async def settle(db: async_sessionmaker, batch_ids: list[str]) -> None:
    """Give every `calling` row whose call has ended its outcome."""
    async with db() as s:
        ended = (await s.execute(
            select(BatchItem.id, Call.disconnection_reason, Call.error_detail)
            .join(Call, Call.id == BatchItem.call_id)
            .where(BatchItem.batch_id.in_(batch_ids), BatchItem.status == "calling", Call.ended_at.is_not(None))
        )).all()
        for item_id, reason, detail in ended:
            status, error = outcome(reason, detail)
            await s.execute(update(BatchItem).where(BatchItem.id == item_id, BatchItem.status == "calling")
                            .values(status=status, error_message=error and error[:2000], updated_at=utcnow()))
            # One row per transaction: processes settling the same rows never hold one lock while waiting for another.
            await s.commit()


async def finish(db: async_sessionmaker, batch_id: str) -> None:
    """Complete the batch once none of its rows waits to be dialed or on its call."""
    now = utcnow()
    pending = exists().where(BatchItem.batch_id == batch_id, BatchItem.status.in_(PENDING))
    async with db() as s:
        result = await s.execute(update(BatchCall)
                                 .where(BatchCall.id == batch_id, BatchCall.status == "in_progress", ~pending)
                                 .values(status="completed", completed_at=now, updated_at=now))
        if result.rowcount != 1:
            return
        batch = await s.get(BatchCall, batch_id)
        counts = dict((await s.execute(select(BatchItem.status, func.count()).where(BatchItem.batch_id == batch_id)
                                       .group_by(BatchItem.status))).all())
        # In the transaction that completes it: the event cannot be lost between the two.
        await outbox.enqueue(s, batch.workspace_id, "batch.completed", {
            "id": batch.id, "batch_name": batch.name, "agent_id": batch.agent_id,
            "caller_phone_id": batch.caller_phone_id, "status": "completed", "status_counts": counts,
            "total": sum(counts.values()), "started_at": iso(batch.started_at), "completed_at": iso(now)})
        await s.commit()
    outbox.wake()
    logger.info(f"batch {batch_id}: completed")


async def renew(db: async_sessionmaker, worker: str, dialing: list[str]) -> None:
    """Keep this process's rows: those following a call, and those whose dial is in flight. A row with neither
    (its dial died before recording anything) is left to lapse, and whoever adopts it finds out what happened."""
    async with db() as s:
        await s.execute(update(BatchItem).where(BatchItem.claimed_by == worker, BatchItem.status == "calling",
                                                or_(BatchItem.call_id.is_not(None), BatchItem.id.in_(dialing)))
                        .values(updated_at=utcnow()))
        await s.commit()


async def release(db: async_sessionmaker, worker: str) -> None:
    """Hand this process's rows to the next process to look, without waiting for the lease to run out."""
    async with db() as s:
        await s.execute(update(BatchItem).where(BatchItem.claimed_by == worker, BatchItem.status == "calling")
                        .values(claimed_by=None))
        await s.commit()


async def adopt(db: async_sessionmaker, batch_ids: list[str], worker: str) -> list[Adopted]:
    """Take over `calling` rows whose claim was released or has lapsed. Each is taken by one process only: the
    update re-checks the lapse, so of two processes racing for a row, the second finds it already renewed."""
    lapsed = or_(BatchItem.claimed_by.is_(None), BatchItem.updated_at < utcnow() - LEASE)
    async with db() as s:
        rows = (await s.execute(select(BatchItem.id, BatchItem.call_id).where(
            BatchItem.batch_id.in_(batch_ids), BatchItem.status == "calling", lapsed))).all()
        taken = []
        for item_id, call_id in rows:
            result = await s.execute(update(BatchItem).where(and_(BatchItem.id == item_id,
                                                                  BatchItem.status == "calling", lapsed))
                                     .values(claimed_by=worker, updated_at=utcnow()))
            await s.commit()  # as in settle(): one row lock at a time
            if result.rowcount == 1:
                taken.append(Adopted(item_id, call_id))
        return taken


async def open_calls(db: async_sessionmaker, call_ids: list[str]) -> list[Call]:
    async with db() as s:
        return list(await s.scalars(select(Call).where(Call.id.in_(call_ids), Call.ended_at.is_(None))))
