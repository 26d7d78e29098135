"""The campaign engine: a background task in every server process that dials started batches, at most `batch_size`
calls of a batch at a time across all processes, and closes each row when its call ends.

Every tick (`VOXLINE_BATCH_POLL_SECS`): renew this process's claims, take over rows whose process went away,
settle rows whose call ended, claim and dial what room each batch has, complete batches with nothing left.

Restarts never redial. A row is marked `calling` (the intent to dial) before the dialer is asked, and the dialer
opens the call's record, tagged with the row, before it asks Twilio. A row left `calling` by a process that stopped
or died is adopted by another: if a call was opened for it, the new owner follows that call (asking Twilio how it
ended, since its status callbacks went to the process that is gone); if not, the row is failed "interrupted before
dialing" rather than put back in the queue. Requeueing would be right for a dead process, but a live one that lost
its lease (a stalled database) may still be about to open the call, and then the row would be dialed twice.

Lost callbacks never leave a row waiting forever. The carrier does not retry a status callback it could not
deliver (the server was restarting, a proxy failed), so a call of this process that has no media stream here is
also checked with the carrier: first `batch_carrier_check_secs` after it was placed, then as often.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from contextlib import suppress
from datetime import datetime, timezone

from loguru import logger

from runtime.batch import carrier, claims
from runtime.context import Runtime
from runtime.reasons import DisconnectionReason as R
from runtime.store import repo
from runtime.store.models import BatchItem, utcnow
from telephony.twilio.dialer import AtCapacity, DialerNotConfigured, MissingVariables, NotDialable, place_call
from telephony.twilio.rest import CarrierError, TwilioCalls

RENEW_EVERY_SECS = 10.0  # well inside claims.LEASE, so a live process never loses its rows
CARRIER_CHECK_EVERY_SECS = 5.0  # an adopted call: its process is gone, so nobody else will close it
# The carrier says an adopted call is over: how long its own stream or status callback gets to close our record
# before we do. Keeps a call that is ending normally in another process from being closed twice over.
CARRIER_GRACE_SECS = 5.0
STOP_GRACE_SECS = 10.0
INTERRUPTED = ("interrupted before dialing: the server stopped between claiming this row and placing its call; "
               "not redialed, so nobody is called twice")
INTERRUPTED_DIALING = ("interrupted while dialing: the server stopped before the carrier answered the request; "
                       "the call may or may not have been placed, so it is not redialed")


def _age_secs(at: datetime) -> float:
    return (utcnow() - (at if at.tzinfo else at.replace(tzinfo=timezone.utc))).total_seconds()


class BatchEngine:
    def __init__(self, rt: Runtime, poll_secs: float | None = None):
        self.rt = rt
        self.poll_secs = poll_secs or rt.settings.batch_poll_secs
        self.worker = f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._dials: dict[str, asyncio.Task] = {}  # item id → its dial in flight
        # Call id → when to ask the carrier about it next, and how often after that: adopted calls (their process
        # is gone) soon and often; this process's own calls late and seldom, in case their callbacks were lost.
        self._followed: dict[str, tuple[float, float]] = {}
        self._own_check_secs = rt.settings.batch_carrier_check_secs
        self._over_since: dict[str, float] = {}  # call id → when the carrier first said it was over
        self._renewed = 0.0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batch-engine")

    async def stop(self) -> None:
        """Stop claiming, let dials in flight record their call, then hand this process's rows to the others."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._dials:
            _, late = await asyncio.wait(list(self._dials.values()), timeout=STOP_GRACE_SECS)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        try:
            await claims.release(self.rt.db, self.worker)
        except Exception:
            logger.exception("batch engine: could not release this process's rows; others take them in "
                             f"{claims.LEASE.total_seconds():.0f}s")

    async def _run(self) -> None:
        logger.info(f"batch engine {self.worker}: polling every {self.poll_secs:g}s")
        failing_since = logged = 0.0
        while not self._stopping.is_set():
            try:
                await self.tick()
                failing_since = 0.0
            except Exception as exc:  # a database blip must not end every campaign of this process
                now = asyncio.get_running_loop().time()
                if not failing_since:
                    failing_since = logged = now
                    logger.exception("batch engine: tick failed; trying again")
                elif now - logged >= 30:  # an outage: a line every 30 s, not a traceback every tick
                    logged = now
                    logger.warning(f"batch engine: still failing after {now - failing_since:.0f}s: "
                                   f"{type(exc).__name__}: {exc}"[:500])
            # Jitter: processes started together would otherwise tick in lockstep, and the first would always win.
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_secs * random.uniform(0.75, 1.25))

    async def tick(self) -> None:
        db = self.rt.db
        batch_ids = await claims.active_batches(db)
        if not batch_ids:
            return
        now = asyncio.get_running_loop().time()
        if now - self._renewed >= RENEW_EVERY_SECS:
            await claims.renew(db, self.worker, list(self._dials))
            self._renewed = now
        for adopted in await claims.adopt(db, batch_ids, self.worker):
            await self._take_over(adopted)
        await self._check_followed()
        await claims.settle(db, batch_ids)
        room = await self.rt.admission.room()
        for batch_id in batch_ids:
            if self._stopping.is_set():
                return
            if room == 0:  # the server is full: the rows wait for the next tick (runtime/capacity.py)
                logger.debug(f"batch engine {self.worker}: at capacity, dialing nothing this tick")
                return
            claim = await claims.claim(db, batch_id, self.worker, most=room)
            if claim is None:
                logger.debug(f"batch {batch_id}: nothing for {self.worker} to claim this tick")
                await claims.finish(db, batch_id)
                continue
            if room is not None:
                room -= len(claim.items)
            for item in claim.items:
                self._dials[item.id] = asyncio.create_task(self._dial(claim, item), name=f"batch-dial-{item.id}")

    async def _dial(self, claim: claims.Claim, item: BatchItem) -> None:
        db = self.rt.db
        try:
            placed = await place_call(
                self.rt, workspace_id=claim.batch.workspace_id, agent=claim.agent, line=claim.line,
                to=item.to_number, variables=item.variables or None, batch_id=claim.batch.id, batch_item_id=item.id)
        except AtCapacity:  # filled up since the tick looked: the row waits for a later one
            await claims.unclaim(db, item.id)
        except (MissingVariables, NotDialable, DialerNotConfigured) as exc:  # refused before anything was created
            await claims.fail(db, item.id, str(exc))
        except Exception as exc:
            logger.opt(exception=exc).error(f"batch {claim.batch.id}: dialing row {item.id} failed")
            # The dialer may have reached Twilio before failing: if it opened a call, follow it rather than guess.
            call_id = await claims.call_for_item(db, item.id)
            if call_id is None:
                await claims.fail(db, item.id, f"dial error: {type(exc).__name__}: {exc}")
            else:
                await claims.record_call(db, item.id, call_id, None)
                self._follow(call_id, CARRIER_CHECK_EVERY_SECS, first_in=0.0)
        else:
            failure = None if placed.status == "success" else (placed.reason or "the call could not be placed")
            await claims.record_call(db, item.id, placed.call_id, failure)
            if failure is None:
                self._follow(placed.call_id, self._own_check_secs)
            logger.info(f"batch {claim.batch.id}: row {item.id} → {placed.to}: {placed.status}"
                        + (f" ({placed.reason})" if placed.reason else "") + f", call {placed.call_id}")
        finally:
            self._dials.pop(item.id, None)

    async def _take_over(self, adopted: claims.Adopted) -> None:
        if adopted.item_id in self._dials:  # our own row, whose lease lapsed while its dial was slow
            return
        call_id = adopted.call_id or await claims.call_for_item(self.rt.db, adopted.item_id)
        if call_id is None:
            logger.warning(f"batch row {adopted.item_id}: {INTERRUPTED}")
            await claims.fail(self.rt.db, adopted.item_id, INTERRUPTED)
            return
        if adopted.call_id is None:
            await claims.record_call(self.rt.db, adopted.item_id, call_id, None)
        logger.info(f"batch row {adopted.item_id}: following call {call_id}, left by a server that stopped")
        self._follow(call_id, CARRIER_CHECK_EVERY_SECS, first_in=0.0)

    def _follow(self, call_id: str, every: float, first_in: float | None = None) -> None:
        now = asyncio.get_running_loop().time()
        self._followed[call_id] = (now + (every if first_in is None else first_in), every)

    async def _check_followed(self) -> None:
        """Close followed calls the carrier says are over but nobody closed: their process is gone, or the
        carrier's callbacks never reached us."""
        now = asyncio.get_running_loop().time()
        due = [c for c, (at, _) in self._followed.items() if now >= at]
        if not due:
            return
        still_open = {c.id: c for c in await claims.open_calls(self.rt.db, due)}
        for call_id in due:
            call = still_open.get(call_id)
            if call is None:  # closed; settle() gives its row the outcome
                self._followed.pop(call_id, None)
                self._over_since.pop(call_id, None)
                continue
            every = self._followed[call_id][1]
            self._followed[call_id] = (now + every, every)
            if call_id in self.rt.sessions:  # streaming here: the session closes it
                continue
            if not call.twilio_call_sid:
                if _age_secs(call.created_at) > claims.LEASE.total_seconds():
                    await self._close(call_id, R.ERROR_INTERNAL, INTERRUPTED_DIALING)
                continue
            try:
                status = await TwilioCalls(self.rt.settings).fetch_status(call.twilio_call_sid)
            except CarrierError as exc:
                logger.warning(f"batch engine: call {call_id}: {exc}; asking again later")
                continue
            if status is not None and status not in repo.CARRIER_FINAL:
                self._over_since.pop(call_id, None)
                continue
            if call_id not in self._over_since:  # look again once the grace is over, not a whole period later
                self._over_since[call_id] = now
                self._followed[call_id] = (now + CARRIER_GRACE_SECS, every)
            if now - self._over_since[call_id] >= CARRIER_GRACE_SECS:
                await self._close(call_id, *carrier.ending(status, connected=call.stream_sid is not None))

    async def _close(self, call_id: str, reason: R, detail: str) -> None:
        logger.warning(f"call {call_id}: closing it for its campaign: {reason}: {detail}")
        await repo.end_call(self.rt.db, call_id, status="failed" if reason.is_error else "completed", reason=reason,
                            detail=detail, ended_by=reason.ended_by)
