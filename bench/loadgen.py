"""The load benchmark's call generator: the Twilio-side caller (a cheap-to-poll MediaStreamCaller), the caller's
speech, one call's script (greeting, then question and barge-in cycles), the pacing of the agent's audio as the
caller received it, and the runs built of calls: a level of N concurrent calls, the warm-up call, the soak.
Used by bench/load.py."""

from __future__ import annotations

import asyncio
import audioop
import base64
import bisect
import contextlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import websockets

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from audio_cache import cached_audio  # noqa: E402
from processes import Refused, Sampler, Target  # noqa: E402
from report import bucket_delta, level_figures, overhead_buckets, summary  # noqa: E402

from telephony.audio import LINE_RATE, speech_bounds, wav_to_ulaw  # noqa: E402
from telephony.twilio.caller import MediaStreamCaller, sid  # noqa: E402

QUESTION = "Where are you located?"
INTERRUPTION = "Wait, where is that exactly?"
# An inter-arrival gap of agent audio this much longer than the audio the message before it carried: 60 ms between
# 20 ms messages (the figure of earlier rounds), 80 ms between 40 ms ones. Twilio's buffer hides such a gap when
# the server keeps a lead; `underruns` counts the ones the caller hears.
GAP_LATE_MS = 40.0


# --- the caller -------------------------------------------------------------------------------------------------------

@dataclass
class Utterance:
    ulaw: bytes
    lead: float  # leading silence, s
    trail: float  # trailing silence, s


def synthesize(text: str, *, voice: str | None = None, speed: int = 150, cache: Path | None = None) -> Utterance:
    """`text` spoken by espeak-ng (its default voice unless `voice`, at `speed` words a minute), as line μ-law;
    read from `cache` when a run made it there before (`--audio-cache`)."""

    def espeak() -> bytes:
        if shutil.which("espeak-ng") is None:
            where = f" (or an --audio-cache with this line in it; {cache} has none)" if cache else ""
            sys.exit(f"espeak-ng is needed to make the caller's speech (apt-get install espeak-ng){where}")
        with tempfile.TemporaryDirectory() as d:
            wav = Path(d) / "u.wav"
            subprocess.run(["espeak-ng", *(["-v", voice] if voice else []), "-s", str(speed), "-w", str(wav), text],
                           check=True)
            return wav_to_ulaw(wav)

    ulaw = cached_audio(cache, f"espeak-ng|{voice}|{speed}|{text}", espeak)
    return Utterance(ulaw, *speech_bounds(ulaw))


async def time_reply(caller: MediaStreamCaller, said: Utterance, sent_at: float, timeout: float = 20.0) -> float | None:
    """Turn latency, ms: the last loud frame of `said` (its last frame went at `sent_at`) → the first agent media
    after it; None if none came. A reply that starts while the utterance's trailing silence (0.44 s for the
    question) is still being sent counts: timing from the first media after `sent_at`, as this benchmark did until
    the fourteenth session, put a floor there under which no turn could go."""
    speech_end = sent_at - said.trail
    first = await caller.wait_agent_audio(speech_end, timeout)
    return None if first is None else (first - speech_end) * 1000


async def time_barge_in(caller: BenchCaller, said: Utterance) -> float | None:
    """Barge-in latency, ms: say `said` over the agent; its onset (first speech frame + its lead) → the first
    `clear` after it (within 2 s); None if none came."""
    clears_before = len(caller.clear_times)
    await caller.say(said.ulaw)
    onset = caller.first_speech_frame_at + said.lead
    await caller.wait_for(lambda: len(caller.clear_times) > clears_before, 2.0)
    clears = [t for t in caller.clear_times[clears_before:] if t >= onset - 0.1]
    return (clears[0] - onset) * 1000 if clears else None


async def answered(caller: BenchCaller, said: Utterance, timeout: float = 20.0) -> bool:
    """Whether the agent answered `said`, the interruption just spoken (within `timeout`). A cycle waits for that
    answer before its 1 s of quiet: that second had passed by the time the interruption was said (the quiet counts
    from the `clear`), so an answer later than the utterance's trailing silence met the next question, cut off by it
    or taken for its reply, and the call ran out of step with the agent. Audio before the `clear` is the reply that
    was interrupted."""
    said_end = caller.last_speech_frame_at - said.trail
    return await caller.wait_agent_audio(max([said_end, *caller.clear_times[-1:]]), timeout) is not None


class BenchCaller(MediaStreamCaller):
    """The Twilio-side caller, with waits that stay cheap with hundreds of calls in one process: the stock ones scan
    every message received so far at every 10 ms poll, which alone took more than a core at 10 calls. Arrival
    times are recorded as messages arrive, so the poll interval does not change what is measured."""

    POLL = 0.02

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clear_times: list[float] = []
        self.on_clear = lambda: self.clear_times.append(time.monotonic())

    async def __aenter__(self) -> BenchCaller:
        # As MediaStreamCaller's, without permessage-deflate: Twilio does not compress its media stream, and
        # zlib on every 20 ms message would cost the server (and this generator) CPU that no real call costs.
        self._ws = await websockets.connect(self.answer.stream_url, max_size=2**20, compression=None)
        await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send_json(self.start_message())
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._send_media())]
        return self

    async def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.closed.is_set() or time.monotonic() >= deadline:
                return predicate()
            await asyncio.sleep(self.POLL)
        return True

    def first_media_after(self, after: float) -> float | None:
        i = bisect.bisect_right(self.media_times, after)
        return self.media_times[i] if i < len(self.media_times) else None

    async def wait_agent_audio(self, after: float, timeout: float) -> float | None:
        await self.wait_for(lambda: self.first_media_after(after) is not None, timeout)
        return self.first_media_after(after)


class LoopLag:
    """How late this generator's event loop wakes up: past ~20 ms its own timestamps (and its 20 ms pacing) blur,
    and the level's figures say more about the generator than the server."""

    def __init__(self, every: float = 0.01):
        self.every, self.lags_ms = every, []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.every)
            self.lags_ms.append((time.monotonic() - t - self.every) * 1000)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return summary(self.lags_ms)


# --- one call ---------------------------------------------------------------------------------------------------------

@dataclass
class CallResult:
    index: int
    connected: bool = False
    greeted: bool = False
    error: str | None = None
    refused: bool = False  # the server turned it away at the door, full (runtime/capacity.py)
    turn_ms: list[float] = field(default_factory=list)
    barge_in_ms: list[float] = field(default_factory=list)
    missed_replies: int = 0
    missed_clears: int = 0
    interarrival_ms: list[float] = field(default_factory=list)
    late_gaps: int = 0
    underruns: int = 0  # agent audio arrived after the client had played everything before it (audible silence)
    max_gap_ms: float = 0.0
    max_lead_ms: float = 0.0  # the most agent audio ever received ahead of real time within a talk spurt (bursts)
    bursts: int = 0  # talk spurts whose lead exceeded 200 ms
    agent_audio_secs: float = 0.0
    # the first gaps of the call: (agent audio seconds into the talk spurt where it fell, gap ms), to find the cause
    gap_positions: list[tuple[float, float]] = field(default_factory=list)


def pacing(caller: MediaStreamCaller, res: CallResult) -> None:
    """Agent audio as the client received it, per talk spurt (split at `clear` and at silences over 1 s)."""
    spurt_start = last = None
    last_secs = 0.0
    audio = 0.0
    playout = 0.0
    lead_max = 0.0
    for r in caller.received:
        ev = r.message.get("event")
        if ev == "clear":
            spurt_start = last = None
            continue
        if ev != "media":
            continue
        secs = len(base64.b64decode(r.message["media"]["payload"])) / LINE_RATE
        res.agent_audio_secs += secs
        if last is None or r.at - last > 1.0:
            if spurt_start is not None and lead_max > 0.2:
                res.bursts += 1
            spurt_start, audio, playout, lead_max = r.at, 0.0, r.at, 0.0
        else:
            gap = (r.at - last) * 1000
            res.interarrival_ms.append(gap)
            res.max_gap_ms = max(res.max_gap_ms, gap)
            if gap - last_secs * 1000 > GAP_LATE_MS:
                res.late_gaps += 1
                if len(res.gap_positions) < 20:
                    res.gap_positions.append((round(audio, 2), round(gap, 1)))
            if r.at > playout + 0.02:
                res.underruns += 1
        audio += secs
        playout = max(playout, r.at) + secs
        lead_max = max(lead_max, audio - (r.at - spurt_start) - secs)
        res.max_lead_ms = max(res.max_lead_ms, lead_max * 1000)
        last, last_secs = r.at, secs
    if spurt_start is not None and lead_max > 0.2:
        res.bursts += 1


@dataclass
class Plan:
    turns: int
    spread: float
    hold: float
    question: Utterance
    interruption: Utterance
    barge_in: bool = True
    barge_in_after: float = 0.3  # seconds into the reply the caller speaks over it
    idle_frames: list[bytes] | None = None  # the caller's line between utterances (None: digital silence)


def line_noise(dbfs: float, secs: float = 1.0) -> list[bytes]:
    """20 ms μ-law frames of white noise at `dbfs` (RMS): a real line's floor, for the VAD to chew on."""
    rng = np.random.default_rng(7)
    pcm = rng.standard_normal(int(secs * 8000)) * (32768 * 10 ** (dbfs / 20))
    ulaw = audioop.lin2ulaw(np.clip(pcm, -32768, 32767).astype(np.int16).tobytes(), 2)
    return [ulaw[i:i + 160] for i in range(0, len(ulaw), 160)]


async def run_call(target: Target, client: httpx.AsyncClient, index: int, plan: Plan, ready: asyncio.Queue,
                   go: asyncio.Event, connect_at: float) -> CallResult:
    res = CallResult(index)
    await asyncio.sleep(max(0.0, connect_at - time.monotonic()))
    caller = None
    try:
        caller = BenchCaller(await target.answer(client), call_sid=sid("CA"))
        if plan.idle_frames:
            caller.idle_frames = plan.idle_frames
        await caller.__aenter__()
        res.connected = True
        res.greeted = await caller.wait_agent_audio(0.0, 30.0) is not None
        await caller.wait_agent_quiet(0.8, 30.0)
    except Exception as exc:  # noqa: BLE001 - a failed call is a result, not a crash of the benchmark
        res.refused = isinstance(exc, Refused)
        res.error = None if res.refused else f"connect: {type(exc).__name__}: {exc}"
    finally:
        ready.put_nowait(index)
    if caller is None or res.error or res.refused:
        if caller is not None:
            await caller.hang_up()
        return res
    try:
        await go.wait()
        await asyncio.sleep(random.uniform(0.0, plan.spread))
        for _ in range(plan.turns):
            turn_ms = await time_reply(caller, plan.question, await caller.say(plan.question.ulaw))
            if turn_ms is None:
                res.missed_replies += 1
                continue
            res.turn_ms.append(turn_ms)
            if plan.barge_in:
                await asyncio.sleep(plan.barge_in_after)  # the agent is mid-sentence
                barge_in_ms = await time_barge_in(caller, plan.interruption)
                if barge_in_ms is not None:
                    res.barge_in_ms.append(barge_in_ms)
                else:
                    res.missed_clears += 1
                if not await answered(caller, plan.interruption):
                    res.missed_replies += 1
            await caller.wait_agent_quiet(1.0, 30.0)
    except Exception as exc:  # noqa: BLE001
        res.error = f"talk: {type(exc).__name__}: {exc}"
    finally:
        await caller.hang_up()
        pacing(caller, res)
    return res


# --- runs of calls ----------------------------------------------------------------------------------------------------

class Watch:
    """What a run samples around its calls: the server's CPU and RSS, the others' CPU (the emulators, this
    generator: only to show what they took from the server), this generator's loop lag, and the server's overhead
    histogram before and after. `begin` waits 2 s first: the server's own idle cost, subtracted from the calls'."""

    @classmethod
    async def begin(cls, target: Target, sample_every: float, others: dict[str, psutil.Process] | None) -> Watch:
        w = cls()
        w.sampler = Sampler(target.proc.ps, sample_every)
        w.side = {name: Sampler(ps, 1.0, tree=False) for name, ps in (others or {}).items()}
        w.metrics_before = overhead_buckets(target.metrics_text())
        w.sampler.start()
        for s_ in w.side.values():
            s_.start()
        w.lag = LoopLag()
        w.lag.start()
        await asyncio.sleep(2.0)
        w.t_idle = time.monotonic()
        return w

    async def end(self, target: Target) -> tuple[dict, dict]:
        """(the overhead histogram's change over the run, this generator's loop lag), a second after the calls."""
        await asyncio.sleep(1.0)
        await self.sampler.stop()
        for s_ in self.side.values():
            await s_.stop()
        loop_lag = await self.lag.stop()
        return bucket_delta(self.metrics_before, overhead_buckets(target.metrics_text())), loop_lag


async def run_level(target: Target, n: int, plan: Plan, connect_secs: float, sample_every: float = 0.5,
                    others: dict[str, psutil.Process] | None = None) -> dict:
    """N concurrent calls against a running target; the level's metrics. `others` (the emulators, this generator)
    are sampled too, only to show how much of the machine they took from the server."""
    watch = await Watch.begin(target, sample_every, others)
    sampler, side, t_idle = watch.sampler, watch.side, watch.t_idle
    ready: asyncio.Queue = asyncio.Queue()
    go = asyncio.Event()
    limits = httpx.Limits(max_connections=max(10, n), max_keepalive_connections=max(10, n))
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        t0 = time.monotonic()
        tasks = [asyncio.create_task(run_call(target, client, i, plan, ready, go, t0 + connect_secs * i / max(1, n)))
                 for i in range(n)]
        for _ in range(n):
            await asyncio.wait_for(ready.get(), timeout=connect_secs + 150)
        t_hold0 = time.monotonic()
        await asyncio.sleep(plan.hold)
        t_hold1 = time.monotonic()
        go.set()
        results: list[CallResult] = await asyncio.gather(*tasks)
        t_end = time.monotonic()
    delta, loop_lag = await watch.end(target)
    others_cpu = {name: s_.window(t_hold1, t_end + 1.0)["cpu_pct"] for name, s_ in side.items()}
    return level_figures(n, results, delta, idle=sampler.window(sampler.samples[0][0], t_idle),
                         hold=sampler.window(t_hold0, t_hold1), talk=sampler.window(t_hold1, t_end),
                         others_cpu=others_cpu, loop_lag=loop_lag)


async def arrivals(target: Target, plan: Plan, rate: float, secs: float, sample_every: float = 0.5,
                   others: dict[str, psutil.Process] | None = None, seed: int = 7) -> dict:
    """Calls arriving one after another, at random (a Poisson process of `rate` calls a second for `secs`), each
    talking its `plan.turns` cycles as soon as greeted and hanging up, as a phone line's traffic comes: the load a
    server's limits (runtime/capacity.py) are for. The figures of a level, over every call offered, plus how many
    were let in at once (most and mean) and how many the server turned away."""
    rng = random.Random(seed)
    at: list[float] = []
    t = rng.expovariate(rate)
    while t < secs:
        at.append(t)
        t += rng.expovariate(rate)
    watch = await Watch.begin(target, sample_every, others)
    sampler, side, t_idle = watch.sampler, watch.side, watch.t_idle
    go = asyncio.Event()
    go.set()  # no hold: each call talks once greeted

    async def timed(i: int, start: float) -> tuple[CallResult, float, float]:
        res = await run_call(target, client, i, plan, asyncio.Queue(), go, start)
        return res, start, time.monotonic()

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        t0 = time.monotonic()
        done = await asyncio.gather(*(timed(i, t0 + a) for i, a in enumerate(at)))
        t_end = time.monotonic()
    delta, loop_lag = await watch.end(target)
    results = [r for r, _, _ in done]
    empty = {"cpu_pct": None, "rss_mb_max": None, "rss_mb_mean": None, "secs": 0.0}
    figures = level_figures(len(at), results, delta, idle=sampler.window(sampler.samples[0][0], t_idle), hold=empty,
                            talk=sampler.window(t0, t_end),
                            others_cpu={name: s_.window(t0, t_end)["cpu_pct"] for name, s_ in side.items()},
                            loop_lag=loop_lag)
    for key in ("cpu_pct_per_call_connected", "cpu_pct_per_call_talking", "rss_mb_per_call"):
        figures["server"][key] = None  # per call needs a fixed number of calls; see the CPU over the window
    spans = [(start, end) for r, start, end in done if r.connected]
    edges = sorted([(s_, 1) for s_, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    figures["arrivals"] = {"rate_per_s": rate, "secs": secs, "offered": len(at), "let_in": len(spans),
                           "most_at_once": most,
                           "mean_at_once": round(sum(e - s_ for s_, e in spans) / max(1e-9, t_end - t0), 1)}
    return figures


async def warm_up(target: Target, plan: Plan) -> None:
    """One call first, not counted: lazy imports and first-use allocations are not per-call costs."""
    short = Plan(turns=1, spread=0.0, hold=0.0, question=plan.question, interruption=plan.interruption,
                 barge_in=False)
    async with httpx.AsyncClient(timeout=30) as client:
        ready: asyncio.Queue = asyncio.Queue()
        go = asyncio.Event()
        go.set()
        res = await run_call(target, client, -1, short, ready, go, time.monotonic())
    if res.error or not res.greeted:
        raise RuntimeError(f"{target.name}: the warm-up call failed ({res.error or 'no greeting'}):\n"
                           f"{target.proc.tail()}")


async def soak(target: Target, calls: int, lanes: int, question: Utterance, log=print) -> dict:
    """`calls` short calls (greeting, one question, its first reply audio, hang-up), `lanes` at a time; RSS after each."""
    rss: list[tuple[int, float]] = []
    errors: list[str] = []
    done = 0
    t0 = time.monotonic()
    rss0 = target.proc.ps.memory_info().rss / 2**20
    counter = iter(range(calls))

    async def lane(client: httpx.AsyncClient) -> None:
        nonlocal done
        for _ in counter:
            try:
                async with BenchCaller(await target.answer(client), call_sid=sid("CA")) as caller:
                    if await caller.wait_agent_audio(0.0, 30.0) is None:
                        raise RuntimeError("no greeting")
                    await caller.wait_agent_quiet(0.6, 30.0)
                    sent = await caller.say(question.ulaw)
                    if await caller.wait_agent_audio(sent, 20.0) is None:
                        raise RuntimeError("no reply")
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{type(exc).__name__}: {exc}")
            done += 1
            await asyncio.sleep(0.2)
            rss.append((done, target.proc.ps.memory_info().rss / 2**20))
            if done % 50 == 0:
                log(f"  soak {target.name}: {done}/{calls} calls, RSS {rss[-1][1]:.0f} MB, "
                    f"{time.monotonic() - t0:.0f}s")

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(lane(client) for _ in range(lanes)))
    await asyncio.sleep(2.0)
    rss_end = target.proc.ps.memory_info().rss / 2**20
    values = [v for _, v in rss]
    k = max(1, min(50, len(values) // 10))
    early = sorted(values[k:2 * k] or values[:k])[len(values[k:2 * k] or values[:k]) // 2]
    late = sorted(values[-k:])[len(values[-k:]) // 2]
    return {"calls": calls, "lanes": lanes, "errors": len(errors), "error_samples": errors[:5],
            "rss_mb_start": round(rss0, 1), "rss_mb_early_median": round(early, 1),
            "rss_mb_late_median": round(late, 1), "rss_mb_end": round(rss_end, 1),
            "rss_growth_pct": round((late - early) / early * 100, 2), "wall_s": round(time.monotonic() - t0, 1),
            "rss_by_call": [(i, round(v, 1)) for i, v in rss]}
