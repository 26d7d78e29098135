"""The webhook dispatcher: a background task in every server process that delivers the outbox.

It wakes when this process commits an event (`outbox.wake`) and otherwise every `VOXLINE_WEBHOOK_POLL_SECS`, claims
the deliveries that are due (any process may claim any row: see delivery.py), sends each as a signed POST, and
records the attempt. A failure (network error, timeout, refused address, non-2xx answer) is retried after the next
delay of `VOXLINE_WEBHOOK_RETRY_SECS` (±20% jitter); after the last, the delivery is failed. Everything lives in the
database, so a restart loses nothing: what was pending is picked up by the next process to look.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from contextlib import suppress
from datetime import timedelta

from loguru import logger

from runtime.context import Runtime
from runtime.store.models import utcnow
from runtime.webhooks import delivery, outbox, signing

MAX_IN_FLIGHT = 16
STOP_GRACE_SECS = 5.0


class Dispatcher:
    def __init__(self, rt: Runtime):
        self.rt = rt
        settings = rt.settings
        self.schedule = list(settings.webhook_retry_secs)
        self.max_attempts = len(self.schedule) + 1
        self.timeout = settings.webhook_timeout_secs
        self.poll_secs = settings.webhook_poll_secs
        # Longer than an attempt can run, so a live process never loses a row it is still delivering.
        self.lease = timedelta(seconds=2 * self.timeout + 5)
        self.worker = f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._in_flight: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        outbox.on_enqueued(self._wake.set)
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        """Stop claiming, give attempts in flight a moment, then hand back what is still claimed."""
        outbox.off_enqueued(self._wake.set)
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._in_flight:
            _, late = await asyncio.wait(list(self._in_flight.values()), timeout=STOP_GRACE_SECS)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        try:
            if released := await delivery.release(self.rt.db, self.worker):
                logger.info(f"webhooks: handed back {released} delivery(ies) cut short by the shutdown")
        except Exception:
            logger.exception(f"webhooks: could not hand back this process's deliveries; they are retried after "
                             f"{self.lease.total_seconds():.0f}s")

    async def _run(self) -> None:
        logger.info(f"webhook dispatcher {self.worker}: polling every {self.poll_secs:g}s, "
                    f"{self.max_attempts} attempts per delivery")
        failing_since = logged = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self.tick()
                failing_since = 0.0
            except Exception as exc:  # a database blip must not end deliveries for the life of the process
                now = asyncio.get_running_loop().time()
                if not failing_since:
                    failing_since = logged = now
                    logger.exception("webhook dispatcher: tick failed; trying again")
                elif now - logged >= 30:
                    logged = now
                    logger.warning(f"webhook dispatcher: still failing after {now - failing_since:.0f}s: "
                                   f"{type(exc).__name__}: {exc}"[:500])
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_secs * random.uniform(0.75, 1.25))

    async def tick(self) -> None:
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0 or self._stopping.is_set():
            return
        for due in await delivery.claim(self.rt.db, self.worker, room, self.lease, self.max_attempts):
            self._in_flight[due.id] = asyncio.create_task(self._attempt(due), name=f"webhook-delivery-{due.id}")

    async def _attempt(self, due: delivery.Due) -> None:
        try:
            started = utcnow()
            body = delivery.body_bytes(due.payload)
            headers = signing.headers(due.secret, due.event_id, due.event_type, body)
            headers["X-Voxline-Delivery-Id"] = due.id
            headers["X-Voxline-Attempt"] = str(due.attempt)
            outcome = await delivery.post(due.url, body, headers, timeout=self.timeout,
                                          allow_private=self.rt.settings.webhooks_allow_private_networks)
            status = await delivery.record(self.rt.db, self.worker, due, started, outcome, self.schedule)
            what = f"HTTP {outcome.status_code}" if outcome.ok else outcome.error
            logger.info(f"webhook {due.webhook_id}: {due.event_type} {due.event_id} attempt {due.attempt}: {what} "
                        f"in {outcome.duration_ms} ms → {status or 'no longer ours'}")
        except asyncio.CancelledError:
            raise
        except Exception:  # the row's lease runs out and the attempt is retried (and logged as interrupted)
            logger.exception(f"webhook {due.webhook_id}: delivery {due.id}: could not record attempt {due.attempt}")
        finally:
            self._in_flight.pop(due.id, None)
            self._wake.set()  # room for another
