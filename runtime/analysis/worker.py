"""The analysis worker: a background task in every server process that analyses finished calls.

Closing a call whose agent has rules marks it `pending` (runtime.call_events). A worker claims a pending call with
a conditional update (pending → running, stamping `analysis_claimed_at`), so of several processes exactly one gets
it. The claim is a lease: a `running` call whose claim is older than `LEASE` (its process died mid-analysis) is
claimed again. The results (or the error) are written only while the claim is still this worker's, in the same
transaction as the `call.analyzed` webhook event. The worker is woken when a call of its process ends, and also
polls (`VOXLINE_ANALYSIS_POLL_SECS`), so calls left pending by a restart, or closed by another process, are done.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import suppress
from datetime import datetime, timedelta

from loguru import logger
from sqlalchemy import and_, null, or_, select, update

from config.agent import AgentConfig
from runtime import call_events
from runtime.analysis.extract import AnalysisError, Turn, extract
from runtime.analysis.rules import RuleDefinition, Wanted
from runtime.context import Runtime
from runtime.records import call_record
from runtime.store.models import (
    Agent,
    AgentAnalysisRule,
    AnalysisRule,
    Call,
    TranscriptEntry,
    utcnow,
)
from runtime.webhooks import outbox

# Longer than an analysis can take (two LLM requests of at most analysis_timeout_secs each, the client retrying
# each once): a live worker never loses its call.
LEASE_MARGIN = timedelta(seconds=60)


def lease(rt: Runtime) -> timedelta:
    return timedelta(seconds=4 * rt.settings.analysis_timeout_secs) + LEASE_MARGIN


def _claimable(now: datetime, lease_: timedelta):
    stale = or_(Call.analysis_claimed_at.is_(None), Call.analysis_claimed_at < now - lease_)
    return or_(Call.analysis_status == "pending", and_(Call.analysis_status == "running", stale))


async def claim_next(rt: Runtime) -> tuple[str, datetime] | None:
    """(call id, claim stamp) of a call this worker now owns, or None when none waits."""
    now = utcnow()
    claimable = _claimable(now, lease(rt))
    async with rt.db() as s:
        ids = list(await s.scalars(select(Call.id).where(claimable).order_by(Call.ended_at, Call.id).limit(20)))
        for call_id in ids:
            result = await s.execute(update(Call).where(Call.id == call_id, claimable)
                                     .values(analysis_status="running", analysis_claimed_at=now))
            await s.commit()  # one row at a time, as in runtime.batch.claims
            if result.rowcount == 1:
                return call_id, now
    return None


async def _inputs(rt: Runtime, call: Call) -> tuple[AgentConfig, list[Turn], Wanted]:
    async with rt.db() as s:
        agent = await s.get(Agent, call.agent_id) if call.agent_id else None
        if agent is None:
            raise AnalysisError("the call's agent was deleted")
        rows = (await s.execute(
            select(AnalysisRule.id, AnalysisRule.definition)
            .join(AgentAnalysisRule, AgentAnalysisRule.rule_id == AnalysisRule.id)
            .where(AgentAnalysisRule.agent_id == agent.id)
            .order_by(AgentAnalysisRule.created_at, AnalysisRule.name))).all()
        entries = await s.scalars(select(TranscriptEntry).where(TranscriptEntry.call_id == call.id,
                                                                TranscriptEntry.role.in_(("user", "assistant")))
                                  .order_by(TranscriptEntry.id))
        turns = [Turn(e.role, e.text) for e in entries if e.text.strip()]
    if not rows:
        raise AnalysisError("no analysis rules are attached to the agent any more")
    try:
        config = AgentConfig.model_validate(agent.config)
    except ValueError as exc:
        raise AnalysisError(f"the agent's stored config is invalid: {exc}"[:2000]) from None
    return config, turns, Wanted([(rule_id, RuleDefinition.model_validate(d)) for rule_id, d in rows])


async def analyse(rt: Runtime, call_id: str, claimed_at: datetime) -> bool:
    """Run the claimed analysis and store it; False when the claim was lost meanwhile (nothing is written)."""
    async with rt.db() as s:
        call = await s.get(Call, call_id)
    result: dict | None = None
    error: str | None = None
    try:
        config, turns, wanted = await _inputs(rt, call)
        extracted = await extract(config, turns, wanted, rt.settings, http_pool=rt.http_pool)
        result = {**extracted, "rules": wanted.rule_ids}
    except AnalysisError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 (a bug or a client library surprise: recorded, not retried forever)
        logger.exception(f"analysis of call {call_id} failed")
        error = f"internal error: {type(exc).__name__}: {exc}"[:2000]
    async with rt.db() as s:
        stored = await s.execute(
            update(Call).where(Call.id == call_id, Call.analysis_status == "running",
                               Call.analysis_claimed_at == claimed_at)
            # null(): SQL NULL, not the JSON `null` a None would be stored as
            .values(analysis_status="error" if error else "done", analysis=null() if result is None else result,
                    analysis_error=error))
        if stored.rowcount != 1:
            await s.rollback()
            logger.warning(f"analysis of call {call_id}: another worker took it over; result dropped")
            return False
        call = await s.get(Call, call_id, populate_existing=True)
        await outbox.enqueue(s, call.workspace_id, "call.analyzed", call_record(call))
        await s.commit()
    outbox.wake()
    logger.info(f"analysis of call {call_id}: " + (f"error: {error}" if error else "done"))
    return True


class AnalysisWorker:
    def __init__(self, rt: Runtime, poll_secs: float | None = None):
        self.rt = rt
        self.poll_secs = poll_secs or rt.settings.analysis_poll_secs
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        call_events.on_analysis_pending(self.wake)
        self._task = asyncio.create_task(self._run(), name="analysis-worker")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop now; an analysis in flight is abandoned and its lease lets the next server redo it."""
        self._stopping.set()
        self._wake.set()
        call_events.off_analysis_pending(self.wake)
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        logger.info(f"analysis worker: polling every {self.poll_secs:g}s")
        failing = False
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                while not self._stopping.is_set() and (claimed := await claim_next(self.rt)) is not None:
                    await analyse(self.rt, *claimed)
                failing = False
            except Exception:  # noqa: BLE001 (a database blip must not end the worker)
                if not failing:
                    logger.exception("analysis worker: failed; trying again")
                failing = True
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_secs * random.uniform(0.75, 1.25))
