"""What follows a call's end, written in the transaction that closes it: the webhook events, and the post-call
analysis marked pending when the agent has rules attached. Workers in any server process pick both up from the
database, so a crash right after the close loses neither."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.metrics import CALLS_ENDED
from runtime.records import call_record
from runtime.reasons import DisconnectionReason
from runtime.store.models import AgentAnalysisRule, Call, TranscriptEntry
from runtime.webhooks import outbox

_analysis_listeners: list = []


def on_analysis_pending(callback) -> None:
    _analysis_listeners.append(callback)


def off_analysis_pending(callback) -> None:
    if callback in _analysis_listeners:
        _analysis_listeners.remove(callback)


def wake_analysis() -> None:
    for callback in list(_analysis_listeners):
        callback()


async def call_started(s: AsyncSession, call: Call) -> None:
    await outbox.enqueue(s, call.workspace_id, "call.started", call_record(call))


async def call_ended(s: AsyncSession, call: Call) -> None:
    """`call` has just been closed in `s` (not yet committed)."""
    if call.agent_id and await s.scalar(select(exists().where(AgentAnalysisRule.agent_id == call.agent_id))):
        call.analysis_status = "pending"
    entries = list(await s.scalars(select(TranscriptEntry).where(TranscriptEntry.call_id == call.id)
                                   .order_by(TranscriptEntry.id)))
    record = call_record(call, entries)
    if call.disconnection_reason == DisconnectionReason.TRANSFER:
        await outbox.enqueue(s, call.workspace_id, "call.transferred", record)
    await outbox.enqueue(s, call.workspace_id, "call.ended", record)


def after_commit(ended: Call | None = None) -> None:
    """Once the transaction is committed: wake this process's workers; count an ended call."""
    if ended is not None:
        CALLS_ENDED.labels(status=ended.status, reason=ended.disconnection_reason or "unknown").inc()
    outbox.wake()
    wake_analysis()
