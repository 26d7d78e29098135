"""New calls a server turns away: refused cleanly and on the record, rather than let onto a server that cannot
carry them, where each would degrade every call already there (issue 8: on two cores, the caller's audio reaches
the VAD seconds late and the replies stall once the loops are full, for every call at once).

Two limits, either or both:
- `VOXLINE_MAX_CALLS`: calls at once on this server, all the workers of `serve --workers N` together. Counted: the
  calls with a live media stream (`voxline_active_calls`) and the calls let in whose stream has not started and
  still can (`voxline_calls_starting`), each gauge summed over the workers' prometheus-client files. An inbound
  call's stream opens a second or two after its webhook is answered, an outbound call's once it is answered:
  counting them from the start keeps a burst of arrivals from all getting in at once. The worker that let a call in
  counts it as starting until its stream starts there, its row says it started on another worker or ended (looked
  up every `SWEEP_SECS` and at each decision), or its stream token expires. Two workers deciding at the same
  instant can both take the last slot, so a burst can pass the limit by about a call per worker.
- `VOXLINE_SHED_LOOP_LAG_MS`: how late this process's event loop may run its timers, on average over the last
  `LAG_WINDOW_SECS`, before new calls are refused. It measures a full machine whatever the calls cost (the agent's
  providers, the line's noise, the machine's speed that hour), which a fixed number cannot. Timers run late when
  the loop has more ready work than time: a 100 ms full collection adds ~3 ms to the mean, a saturated loop tens to
  hundreds. It protects the calls in progress against calls arriving one after another; a burst that lands
  together is let in before the loop falls behind, which is what the fixed number is for.

What is refused: an inbound call is answered `<Reject reason="busy"/>` (the caller hears a busy tone; Twilio does
not answer or bill it) and recorded `failed` with `concurrency_limit_reached`; an outbound call (`create_call`) or a
softphone call is refused before anything is created, 503 `at_capacity` with `Retry-After`; a campaign dials no
more rows than there is room for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import glob
import os
import time

from loguru import logger
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from config.settings import Settings
from runtime import metrics
from runtime.store.models import Call

RESERVED_SECS = 10.0  # a slot let in whose call row never came (the database failed) is free again after this
ADMITTED_GRACE_SECS = 5.0  # past the stream token's lifetime: a start already on its way (runtime/recovery.py)
SWEEP_SECS = 1.0
LAG_TICK_SECS = 0.1
LAG_WINDOW_SECS = 3.0
RETRY_AFTER_SECS = 5


class LoopLag:
    """How late the event loop runs a timer due every `LAG_TICK_SECS`: the mean over the last `LAG_WINDOW_SECS`."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._samples: collections.deque[float] = collections.deque(maxlen=round(LAG_WINDOW_SECS / LAG_TICK_SECS))
        self._total = 0.0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._ticks = 0

    def start(self) -> None:
        self._due = self._loop.time() + LAG_TICK_SECS
        self._handle = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self._loop.time()
        late = max(0.0, now - self._due)
        if len(self._samples) == self._samples.maxlen:
            self._total -= self._samples[0]
        self._samples.append(late)
        self._total += late
        self._ticks += 1
        if self._ticks % 10 == 0:
            metrics.LOOP_LAG.set(self.mean_secs())
        self._due = now + LAG_TICK_SECS
        self._handle = self._loop.call_at(self._due, self._tick)

    def mean_secs(self) -> float:
        return self._total / len(self._samples) if self._samples else 0.0


class Admission:
    """Whether this server takes one more call now (`admit`), and how many calls it has."""

    def __init__(self, settings: Settings, sessions: dict, lag: LoopLag | None = None,
                 db: async_sessionmaker | None = None):
        self.max_calls = settings.max_calls
        self.admitted_secs = settings.stream_token_ttl_secs + ADMITTED_GRACE_SECS
        self._db = db
        self.shed_lag_secs = settings.shed_loop_lag_ms / 1000 if settings.shed_loop_lag_ms else None
        self._sessions = sessions
        self.lag = lag
        self._admitted: dict[str, float] = {}  # call id → until when it counts, stream or not
        # Slots taken by an `admit` that let a call in, until its row exists (`admitted`): concurrent
        # webhooks on this process each see the others' (one that never gets a row frees its slot after a while).
        self._reserved: collections.deque[float] = collections.deque()
        self._shedding = False
        self._sweeper: asyncio.Task | None = None

    def start(self) -> None:
        """With a limit and a database: forget, every `SWEEP_SECS`, the calls let in here whose stream another worker
        started (or that ended), so the other workers stop counting them as starting here."""
        if self.max_calls and self._db is not None and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="admission-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECS)
            try:
                await self._sweep()
            except Exception as exc:  # a database blip: the calls stay counted a little longer, never fewer
                logger.warning(f"admission: could not check the calls let in: {type(exc).__name__}: {exc}"[:300])

    def admitted(self, call_id: str) -> None:
        """A call let in: it counts against `max_calls` until its stream starts or its stream token expires."""
        if self.max_calls:
            if self._reserved:
                self._reserved.popleft()
            self._admitted[call_id] = time.monotonic() + self.admitted_secs
            self._publish()

    def started(self, call_id: str) -> None:
        if self._admitted.pop(call_id, None) is not None:
            self._publish()

    def _publish(self) -> None:
        metrics.CALLS_STARTING.set(len(self._admitted) + len(self._reserved))

    async def _sweep(self) -> None:
        """Drop the calls let in here that can no longer start (token expired), or whose stream started on any worker
        (its gauge counts it there now), or that ended first (hung up while ringing); free stale reservations."""
        now = time.monotonic()
        for call_id in [c for c, until in self._admitted.items() if until <= now]:
            del self._admitted[call_id]
        while self._reserved and self._reserved[0] <= now:
            self._reserved.popleft()
        if self._admitted and self._db is not None:
            async with self._db() as s:
                gone = set(await s.scalars(select(Call.id).where(
                    Call.id.in_(list(self._admitted)), (Call.stream_sid.is_not(None)) | (Call.ended_at.is_not(None)))))
            for call_id in gone:
                self._admitted.pop(call_id, None)
        self._publish()

    async def calls_now(self) -> int:
        """Live media streams and calls let in but not yet streaming, on every worker of this server."""
        await self._sweep()
        live, starting = _box_counts()
        if live is None:  # one process
            return len(self._sessions) + len(self._admitted) + len(self._reserved)
        return max(live, len(self._sessions)) + max(starting, len(self._admitted) + len(self._reserved))

    async def admit(self, what: str) -> str | None:
        """Whether `what` (a new call, as the log names it) may start: None, and it holds its slot from here (pass
        its id to `admitted` once its row exists); or why not, logged and counted."""
        refused = self._refusal(await self._counted())
        if refused is not None:
            limit, why = refused
            metrics.CALLS_REFUSED.labels(limit=limit).inc()
            logger.warning(f"{what} refused: {why}")
            return why
        if self.max_calls:
            self._reserved.append(time.monotonic() + RESERVED_SECS)
            self._publish()
        return None

    async def status(self) -> tuple[str | None, int | None]:
        """(why a new call would be refused now, or None; how many more may start now: None when no limit is set, 0
        while refusing), from one count of the calls; takes no slot."""
        n = await self._counted()
        refused = self._refusal(n)
        if refused is not None:
            return refused[1], 0
        return None, max(0, self.max_calls - n) if self.max_calls else None

    async def refusal(self) -> str | None:
        """Why a new call would be refused now, or None; takes no slot."""
        return (await self.status())[0]

    async def room(self) -> int | None:
        """How many more calls may start now: None when no limit is set, 0 while refusing."""
        return (await self.status())[1]

    async def _counted(self) -> int:
        """The calls counted against `max_calls` (none to count without one)."""
        return await self.calls_now() if self.max_calls else 0

    def _refusal(self, n: int) -> tuple[str, str] | None:
        """(the limit, why) when a new call is refused now, with `n` calls counted."""
        if self.max_calls and n >= self.max_calls:
            return "max_calls", (f"the server is at its limit of {self.max_calls} calls (VOXLINE_MAX_CALLS; {n} live "
                                 "or starting)")
        if self.shed_lag_secs and self.lag is not None:
            lag = self.lag.mean_secs()
            if lag >= self.shed_lag_secs:
                if not self._shedding:
                    self._shedding = True
                    logger.warning(f"event loop {lag * 1000:.0f} ms late on average: refusing new calls until it is "
                                   f"under {self.shed_lag_secs * 1000:.0f} ms (VOXLINE_SHED_LOOP_LAG_MS)")
                return "loop_lag", (f"the server is overloaded: its event loop runs {lag * 1000:.0f} ms late on "
                                    f"average (VOXLINE_SHED_LOOP_LAG_MS={self.shed_lag_secs * 1000:g})")
            if self._shedding:
                self._shedding = False
                logger.info(f"event loop {lag * 1000:.0f} ms late on average: taking new calls again")
        return None



def _box_counts() -> tuple[int | None, int]:
    """(live streams, calls starting) summed over the workers of this server from prometheus-client's files; (None,
    0) for a single process, whose own counts are the server's."""
    folder = os.environ.get(metrics.MULTIPROC_ENV)
    if not folder:
        return None, 0
    from prometheus_client.multiprocess import MultiProcessCollector

    metrics.forget_dead_workers()
    files = glob.glob(os.path.join(folder, "gauge_livesum_*.db"))
    totals = {"voxline_active_calls": 0.0, "voxline_calls_starting": 0.0}
    for metric in MultiProcessCollector.merge(files, accumulate=True):
        if metric.name in totals:
            totals[metric.name] += sum(sample.value for sample in metric.samples)
    return round(totals["voxline_active_calls"]), round(totals["voxline_calls_starting"])
