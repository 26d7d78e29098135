"""Load benchmark: voxline against a stock pipecat 1.14 Twilio bot, driven by the same Twilio-side caller.

    .venv/bin/python bench/load.py --target both --calls 20 --out bench-out
    .venv/bin/python bench/load.py --target both --ramp --out bench-out            # largest N holding the goals
    .venv/bin/python bench/load.py --target both --soak 1000 --out bench-out       # RSS over sequential calls
    .venv/bin/python bench/load.py --smoke --out /tmp/smoke                        # seconds: keeps the harness working

It starts everything itself on free loopback ports: the provider emulators (`voxline emulate deepgram|openai|
cartesia`, each its own process, `--latency-ms` 0 by default), then for each target in turn the server under test
(`voxline serve` with a Deepgram + OpenAI + Cartesia agent pointed at the emulators, or the keyless demo-style agent
with `--agent local`; `bench/baseline_bot.py` for the baseline), runs the calls, samples the server process's CPU
and RSS (psutil), and stops it. Only the server process is measured; the emulators and this generator are not.

Each call: the caller connects (voxline: the signed-less voice webhook, then the stream; baseline: its socket),
hears the greeting, and waits until every call is connected and quiet; CPU and RSS are sampled over that "hold"
(N connected calls streaming silence at 20 ms pacing). Then each call, at a random offset within `--spread`
seconds, runs `--turns` cycles of: a question (turn latency: last loud caller frame → first agent `media`), and
0.3 s into the reply an interruption (barge-in: first loud caller frame → `clear`), then silence until the agent is
quiet. Runtime overhead comes from the server: its end-of-turn decision → first agent audio, from pipecat's
UserBotLatencyObserver in both servers (`voxline_turn_overhead_seconds` on `/metrics`, read before and after each
level); `part=runtime` takes the LLM's and the TTS's time to first byte out, which is the emulators' own time.

Outputs in --out: results.json (everything, per call and aggregated), results.md (voxline vs baseline and their
ratio) and PNG plots (latency CDFs by N, RSS over the soak) when matplotlib is installed (the `bench` extra).
Figures, never assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telephony.audio import LINE_RATE, speech_bounds, wav_to_ulaw  # noqa: E402
from telephony.twilio.caller import Answer, MediaStreamCaller, post_incoming_call, sid  # noqa: E402

GOALS = {"barge_in_p95_ms": 250.0, "overhead_p95_ms": 30.0}
QUESTION = "Where are you located?"
INTERRUPTION = "Wait, where is that exactly?"
GAP_MS = 60.0  # an inter-arrival gap of agent audio this long is audible as a stall
REPLY = ("We are at twelve Main Street, next to the old cinema, and we are open every day from noon until ten "
         "in the evening.")
GREETING = "Hello, thanks for calling Luigi's."
CLOUD_NUMBER = "+15550100800"
LOCAL_NUMBER = "+15550100801"

AGENT_FILES = {
    "bench_cloud.yaml": f"""
name: bench-cloud
phone_numbers: ["{CLOUD_NUMBER}"]
system_prompt: You are the front desk of Luigi's, a small restaurant. Answer briefly and politely.
welcome_message: {GREETING}
transcriber: {{provider: deepgram, model: nova-3}}
llm: {{provider: openai, model: gpt-4o-mini}}
tts: {{provider: cartesia}}
call: {{silence_timeout_secs: 0}}
""",
    "bench_local.yaml": f"""
name: bench-local
phone_numbers: ["{LOCAL_NUMBER}"]
system_prompt: You are the front desk of Luigi's, a small restaurant. Answer briefly and politely.
welcome_message: {GREETING}
transcriber: {{provider: whisper, model: tiny.en, language: en}}
llm:
  provider: scripted
  script:
    rules: []
    fallback: {REPLY}
tts: {{provider: piper, voice: en_US-joe-medium}}
call: {{silence_timeout_secs: 0}}
""",
}
# The baseline asks its LLM for the greeting, as pipecat's examples do ("Say hello and briefly introduce yourself").
OPENAI_RULES = {"greeting": GREETING, "fallback": REPLY, "rules": [{"keywords": ["introduce"], "reply": GREETING}]}


# --- small helpers -----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(values: list[float]) -> dict:
    """n, p50/p95/p99 (nearest rank: always a measured value), max, mean; {"n": 0} when empty."""
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return {"n": 0}

    def pick(q: float) -> float:
        return vals[max(0, min(len(vals) - 1, math.ceil(q * len(vals)) - 1))]

    return {"n": len(vals), "p50": round(pick(0.50), 1), "p95": round(pick(0.95), 1), "p99": round(pick(0.99), 1),
            "max": round(vals[-1], 1), "mean": round(sum(vals) / len(vals), 1)}


@dataclass
class Utterance:
    ulaw: bytes
    lead: float  # leading silence, s
    trail: float  # trailing silence, s


def synthesize(text: str) -> Utterance:
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is needed to make the caller's speech (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "u.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), text], check=True)
        ulaw = wav_to_ulaw(wav)
    return Utterance(ulaw, *speech_bounds(ulaw))


# --- processes ---------------------------------------------------------------------------------------------------

class Proc:
    """A child process with its log in the work dir; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: dict, log: Path, cwd: Path = ROOT):
        self.name, self.log = name, log
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.ps = psutil.Process(self.popen.pid)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def base_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "VOXLINE_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", DEEPGRAM_API_KEY="bench", OPENAI_API_KEY="bench",
               CARTESIA_API_KEY="bench")
    env.update(extra or {})
    return env


def wait_until(check, timeout: float, proc: Proc, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name}: {what} not within {timeout:.0f}s:\n{proc.tail()}")


class Emulators:
    """deepgram, openai and cartesia emulators, each in its own process (their CPU is not the server's); `fast`:
    the same emulators with their models swapped for cheap ones (bench/fast_providers.py)."""

    def __init__(self, work: Path, latency_ms: int, fast: bool = True):
        self.procs: dict[str, Proc] = {}
        self.urls: dict[str, str] = {}
        rules = work / "openai_rules.json"
        rules.write_text(json.dumps(OPENAI_RULES))
        for name in ("deepgram", "openai", "cartesia"):
            port = free_port()
            launcher = ([str(ROOT / "bench" / "fast_providers.py")] if fast else ["-m", "runtime.cli", "emulate"])
            argv = [sys.executable, *launcher, name, "--port", str(port),
                    "--latency-ms", str(latency_ms)] + (["--rules", str(rules)] if name == "openai" else [])
            self.procs[name] = Proc(f"{name} emulator", argv, base_env({"VOXLINE_LOG_LEVEL": "WARNING"}),
                                    work / f"emulator-{name}.log")
            self.urls[name] = {"deepgram": f"ws://127.0.0.1:{port}", "openai": f"http://127.0.0.1:{port}/v1",
                               "cartesia": f"ws://127.0.0.1:{port}/tts/websocket"}[name]
        for proc in self.procs.values():
            wait_until(lambda p=proc: "listening on" in p.log.read_text(errors="replace"), 120, proc, "ready")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


class Target:
    """A server under test: its process, and how a call reaches it."""

    name: str
    proc: Proc
    url: str

    async def answer(self, client: httpx.AsyncClient) -> Answer:
        raise NotImplementedError

    def metrics_text(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def stop(self) -> None:
        self.proc.stop()


class Voxline(Target):
    def __init__(self, work: Path, emulators: Emulators, agent: str):
        self.name = "voxline"
        base = work / "voxline"
        (base / "agents").mkdir(parents=True, exist_ok=True)
        for fname, text in AGENT_FILES.items():
            (base / "agents" / fname).write_text(text)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.number = CLOUD_NUMBER if agent == "cloud" else LOCAL_NUMBER
        env = base_env({
            "VOXLINE_DATA_DIR": str(base / "data"), "VOXLINE_AGENTS_DIR": str(base / "agents"),
            "VOXLINE_PUBLIC_URL": self.url, "VOXLINE_LOG_LEVEL": "WARNING",
            "VOXLINE_DEEPGRAM_BASE_URL": emulators.urls["deepgram"],
            "VOXLINE_OPENAI_BASE_URL": emulators.urls["openai"],
            "VOXLINE_CARTESIA_URL": emulators.urls["cartesia"],
        })
        self.proc = Proc("voxline", [sys.executable, "-m", "runtime.cli", "serve", "--port", str(port)], env,
                         work / "voxline.log", cwd=base)
        wait_until(lambda: httpx.get(self.url + "/health", timeout=1).status_code == 200, 120, self.proc, "healthy")

    async def answer(self, client: httpx.AsyncClient) -> Answer:
        answer = await post_incoming_call(self.url, self.number, client=client)
        if answer.status_code != 200 or not answer.stream_url:
            raise RuntimeError(f"webhook answered {answer.status_code}: {answer.twiml[:300]}")
        return answer


class Baseline(Target):
    def __init__(self, work: Path, emulators: Emulators, sample_rate: int, turn: str, stack: str = "cloud"):
        self.name = "baseline"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, str(ROOT / "bench" / "baseline_bot.py"), "--port", str(port),
                "--deepgram-url", emulators.urls["deepgram"], "--openai-url", emulators.urls["openai"],
                "--cartesia-url", emulators.urls["cartesia"], "--sample-rate", str(sample_rate), "--turn", turn,
                "--stack", stack]
        self.proc = Proc("baseline", argv, base_env(), work / "baseline.log")
        wait_until(lambda: httpx.get(self.url + "/health", timeout=1).status_code == 200, 120, self.proc, "healthy")

    async def answer(self, client: httpx.AsyncClient) -> Answer:
        return Answer(status_code=200, twiml="", stream_url=self.url.replace("http://", "ws://") + "/ws",
                      parameters={})


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


# --- sampling the server process ---------------------------------------------------------------------------------

class Sampler:
    """CPU (% of one core) and RSS (MB) of one process, every `every` seconds, with labelled windows."""

    def __init__(self, ps: psutil.Process, every: float = 0.5, tree: bool = True):
        self.ps, self.every, self.tree = ps, every, tree
        self.samples: list[tuple[float, float, float]] = []  # (t, cpu seconds so far, rss MB)
        self._task: asyncio.Task | None = None

    def sample(self) -> tuple[float, float, float]:
        cpu, rss = 0.0, 0.0
        # a server with worker processes counts them all (the generator's own children are the servers: not it)
        for p in [self.ps, *(self.ps.children(recursive=True) if self.tree else ())]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                cpu, rss = cpu + t.user + t.system, rss + p.memory_info().rss / 2**20
        s = (time.monotonic(), cpu, rss)
        self.samples.append(s)
        return s

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.sample()
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def window(self, t0: float, t1: float) -> dict:
        """CPU % of one core over [t0, t1] (from the samples bracketing it) and RSS max/mean inside it."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return {"cpu_pct": None, "rss_mb_max": None, "rss_mb_mean": None, "secs": round(t1 - t0, 2)}
        cpu = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) * 100
        rss = [s[2] for s in inside]
        return {"cpu_pct": round(cpu, 2), "rss_mb_max": round(max(rss), 1), "rss_mb_mean": round(sum(rss) / len(rss), 1),
                "secs": round(inside[-1][0] - inside[0][0], 2)}


# --- server-side overhead from /metrics --------------------------------------------------------------------------

def overhead_buckets(text: str) -> dict[str, list[tuple[float, float]]]:
    """Cumulative (le, count) per part of voxline_turn_overhead_seconds."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "voxline_turn_overhead_seconds":
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                out.setdefault(s.labels.get("part", "total"), []).append((float(s.labels["le"]), s.value))
    return {k: sorted(v) for k, v in out.items()}


def bucket_delta(before: dict, after: dict) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for part, buckets in after.items():
        prev = dict(before.get(part, []))
        out[part] = [(le, c - prev.get(le, 0.0)) for le, c in buckets]
    return out


def bucket_summary(buckets: list[tuple[float, float]]) -> dict:
    """Percentiles (ms) from cumulative histogram buckets, linear within a bucket (Prometheus' way)."""
    if not buckets or buckets[-1][1] <= 0:
        return {"n": 0}
    total = buckets[-1][1]

    def q(p: float) -> float:
        rank = p * total
        lo_le, lo_c = 0.0, 0.0
        for le, c in buckets:
            if c >= rank:
                if math.isinf(le):
                    return lo_le * 1000
                return (lo_le + (le - lo_le) * ((rank - lo_c) / (c - lo_c) if c > lo_c else 1.0)) * 1000
            lo_le, lo_c = le, c
        return lo_le * 1000

    finite = [(le, c) for le, c in buckets if not math.isinf(le)]
    top = next((le for le, c in finite if c >= total), None)
    return {"n": int(total), "p50": round(q(0.5), 1), "p95": round(q(0.95), 1), "p99": round(q(0.99), 1),
            "max_le": round(top * 1000, 1) if top is not None else None, "from": "histogram"}


def bucket_cdf(buckets: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    total = buckets[-1][1] if buckets else 0
    if not total:
        return [], []
    pts = [(le * 1000, c / total) for le, c in buckets if not math.isinf(le)]
    return [p[0] for p in pts], [p[1] for p in pts]


# --- one call ----------------------------------------------------------------------------------------------------

@dataclass
class CallResult:
    index: int
    connected: bool = False
    greeted: bool = False
    error: str | None = None
    turn_ms: list[float] = field(default_factory=list)
    barge_in_ms: list[float] = field(default_factory=list)
    missed_replies: int = 0
    missed_clears: int = 0
    interarrival_ms: list[float] = field(default_factory=list)
    gaps_over_60ms: int = 0
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
            if gap > GAP_MS:
                res.gaps_over_60ms += 1
                if len(res.gap_positions) < 20:
                    res.gap_positions.append((round(audio, 2), round(gap, 1)))
            if r.at > playout + 0.02:
                res.underruns += 1
        audio += secs
        playout = max(playout, r.at) + secs
        lead_max = max(lead_max, audio - (r.at - spurt_start) - secs)
        res.max_lead_ms = max(res.max_lead_ms, lead_max * 1000)
        last = r.at
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


async def run_call(target: Target, client: httpx.AsyncClient, index: int, plan: Plan, ready: asyncio.Queue,
                   go: asyncio.Event, connect_at: float) -> CallResult:
    res = CallResult(index)
    await asyncio.sleep(max(0.0, connect_at - time.monotonic()))
    caller = None
    try:
        caller = BenchCaller(await target.answer(client), call_sid=sid("CA"))
        await caller.__aenter__()
        res.connected = True
        res.greeted = await caller.wait_agent_audio(0.0, 30.0) is not None
        await caller.wait_agent_quiet(0.8, 30.0)
    except Exception as exc:  # noqa: BLE001 - a failed call is a result, not a crash of the benchmark
        res.error = f"connect: {type(exc).__name__}: {exc}"
    finally:
        ready.put_nowait(index)
    if caller is None or res.error:
        if caller is not None:
            await caller.hang_up()
        return res
    try:
        await go.wait()
        await asyncio.sleep(random.uniform(0.0, plan.spread))
        for _ in range(plan.turns):
            sent_at = await caller.say(plan.question.ulaw)
            speech_end = sent_at - plan.question.trail
            first = await caller.wait_agent_audio(sent_at, 20.0)
            if first is None:
                res.missed_replies += 1
                continue
            res.turn_ms.append((first - speech_end) * 1000)
            if plan.barge_in:
                await asyncio.sleep(0.3)  # the agent is mid-sentence
                clears_before = len(caller.clear_times)
                await caller.say(plan.interruption.ulaw)
                onset = caller.first_speech_frame_at + plan.interruption.lead
                await caller.wait_for(lambda: len(caller.clear_times) > clears_before, 2.0)
                clears = [t for t in caller.clear_times[clears_before:] if t >= onset - 0.1]
                if clears:
                    res.barge_in_ms.append((clears[0] - onset) * 1000)
                else:
                    res.missed_clears += 1
            await caller.wait_agent_quiet(1.0, 30.0)
    except Exception as exc:  # noqa: BLE001
        res.error = f"talk: {type(exc).__name__}: {exc}"
    finally:
        await caller.hang_up()
        pacing(caller, res)
    return res


async def run_level(target: Target, n: int, plan: Plan, connect_secs: float, sample_every: float = 0.5,
                    others: dict[str, psutil.Process] | None = None) -> dict:
    """N concurrent calls against a running target; the level's metrics. `others` (the emulators, this generator)
    are sampled too, only to show how much of the machine they took from the server."""
    sampler = Sampler(target.proc.ps, sample_every)
    side = {name: Sampler(ps, 1.0, tree=False) for name, ps in (others or {}).items()}
    metrics_before = overhead_buckets(target.metrics_text())
    sampler.start()
    for s_ in side.values():
        s_.start()
    lag = LoopLag()
    lag.start()
    await asyncio.sleep(2.0)  # the server's own idle cost, subtracted from the calls'
    t_idle = time.monotonic()
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
    await asyncio.sleep(1.0)
    await sampler.stop()
    for s_ in side.values():
        await s_.stop()
    loop_lag = await lag.stop()
    delta = bucket_delta(metrics_before, overhead_buckets(target.metrics_text()))
    idle = sampler.window(sampler.samples[0][0], t_idle)
    hold = sampler.window(t_hold0, t_hold1)
    talk = sampler.window(t_hold1, t_end)
    connected = sum(r.connected and not (r.error or "").startswith("connect") for r in results)
    per = max(1, connected)
    cpu_idle = idle["cpu_pct"] or 0.0
    all_of = lambda key: [v for r in results for v in getattr(r, key)]  # noqa: E731
    level = {
        "calls": n,
        "connected": connected,
        "errors": [r.error for r in results if r.error],
        "turn_ms": summary(all_of("turn_ms")),
        "barge_in_ms": summary(all_of("barge_in_ms")),
        "overhead_ms": bucket_summary(delta.get("total", [])),
        "overhead_runtime_ms": bucket_summary(delta.get("runtime", [])),
        "overhead_buckets": delta,
        "missed_replies": sum(r.missed_replies for r in results),
        "missed_clears": sum(r.missed_clears for r in results),
        "pacing": {
            "interarrival_ms": summary(all_of("interarrival_ms")),
            "gaps_over_60ms": sum(r.gaps_over_60ms for r in results),
            "underruns": sum(r.underruns for r in results),
            "max_gap_ms": round(max((r.max_gap_ms for r in results), default=0.0), 1),
            "max_lead_ms": round(max((r.max_lead_ms for r in results), default=0.0), 1),
            "bursts": sum(r.bursts for r in results),
            "calls_with_gaps": sum(1 for r in results if r.gaps_over_60ms),
            "agent_audio_secs": round(sum(r.agent_audio_secs for r in results), 1),
        },
        "server": {
            "idle": idle, "hold": hold, "talk": talk,
            # per connected call, net of the server's own idle cost before the calls
            "cpu_pct_per_call_connected": round(((hold["cpu_pct"] or 0.0) - cpu_idle) / per, 3),
            "cpu_pct_per_call_talking": round(((talk["cpu_pct"] or 0.0) - cpu_idle) / per, 3),
            "rss_mb_per_call": round(((hold["rss_mb_max"] or 0.0) - (idle["rss_mb_mean"] or 0.0)) / per, 2),
            "rss_mb_before": idle["rss_mb_mean"],
        },
        # % of one core while the calls talked: what the rest of the benchmark took from the same machine
        "others_cpu_pct_talking": {name: s_.window(t_hold1, t_end + 1.0)["cpu_pct"] for name, s_ in side.items()},
        "generator_loop_lag_ms": loop_lag,
        "per_call": [asdict(r) | {"interarrival_ms": None} for r in results],
        "raw": {"turn_ms": all_of("turn_ms"), "barge_in_ms": all_of("barge_in_ms")},
    }
    level["holds_goals"] = holds_goals(level)
    return level


def holds_goals(level: dict) -> bool:
    b, o = level["barge_in_ms"], level["overhead_runtime_ms"]
    return (level["connected"] == level["calls"] and not level["errors"] and b.get("n", 0) > 0
            and b["p95"] <= GOALS["barge_in_p95_ms"] and o.get("n", 0) > 0 and o["p95"] <= GOALS["overhead_p95_ms"]
            and level["pacing"]["gaps_over_60ms"] == 0 and level["missed_replies"] == 0)


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


# --- report ------------------------------------------------------------------------------------------------------

ROWS = [
    # label, path in a level, stat, goal text
    ("turn latency: caller speech end → first agent media", ("turn_ms",), "p50", ""),
    ("turn latency", ("turn_ms",), "p95", ""),
    ("barge-in: caller speech onset → `clear`", ("barge_in_ms",), "p50", ""),
    ("barge-in", ("barge_in_ms",), "p95", "≤ 250 ms"),
    ("barge-in", ("barge_in_ms",), "p99", ""),
    ("runtime overhead: end of turn → first agent audio, less LLM/TTS TTFB", ("overhead_runtime_ms",), "p50", ""),
    ("runtime overhead, less LLM/TTS TTFB", ("overhead_runtime_ms",), "p95", "≤ 30 ms"),
    ("end of turn → first agent audio (with the emulators' TTFB)", ("overhead_ms",), "p95", ""),
    ("outbound inter-arrival of agent media", ("pacing", "interarrival_ms"), "p99", ""),
    ("outbound gaps > 60 ms (count)", ("pacing", "gaps_over_60ms"), None, "0"),
    ("outbound underruns (count)", ("pacing", "underruns"), None, ""),
    ("outbound max lead over real time", ("pacing", "max_lead_ms"), None, ""),
    ("server CPU per connected call (% of a core)", ("server", "cpu_pct_per_call_connected"), None, "≤ 1.5 %"),
    ("server CPU per talking call (% of a core)", ("server", "cpu_pct_per_call_talking"), None, ""),
    ("server RSS per additional call (MB)", ("server", "rss_mb_per_call"), None, "≤ 10 MB"),
]


def pick(level: dict, path: tuple, stat: str | None) -> float | None:
    v: Any = level
    for p in path:
        v = v.get(p) if isinstance(v, dict) else None
    if stat is not None:
        v = v.get(stat) if isinstance(v, dict) else None
    return v if isinstance(v, (int, float)) else None


def fmt(v: float | None, path: tuple, stat: str | None) -> str:
    if v is None:
        return "–"
    if stat is not None or path[-1].endswith("_ms"):
        return f"{v:.0f} ms" if abs(v) >= 10 else f"{v:.1f} ms"
    if "cpu" in path[-1]:
        return f"{v:.2f} %"
    if "rss" in path[-1]:
        return f"{v:.1f} MB"
    return f"{v:g}"


def ratio(a: float | None, b: float | None) -> str:
    """baseline ÷ voxline: above 1, voxline is lower (every metric here is better lower)."""
    if a is None or b is None or a <= 0 or b <= 0:
        return "–"
    return f"{b / a:.2f}×" if b / a < 10 else f"{b / a:.0f}×"


def comparison(results: dict) -> list[dict]:
    """One row per metric and level size present in both targets: voxline, baseline, baseline/voxline."""
    rows = []
    vx = results.get("voxline", {}).get("levels", [])
    bl = results.get("baseline", {}).get("levels", [])
    for i in range(max(len(vx), len(bl))):
        a_lv, b_lv = (vx[i] if i < len(vx) else None), (bl[i] if i < len(bl) else None)
        ns = sorted({lv["calls"] for lv in (a_lv, b_lv) if lv})
        n = ns[0] if len(ns) == 1 else " / ".join(str(lv["calls"] if lv else "–") for lv in (a_lv, b_lv))
        for label, path, stat, goal in ROWS:
            a = pick(a_lv, path, stat) if a_lv else None
            b = pick(b_lv, path, stat) if b_lv else None
            rows.append({"calls": n, "metric": label + (f" {stat}" if stat else ""), "goal": goal,
                         "voxline": a, "baseline": b, "baseline_over_voxline": (b / a) if a and b else None,
                         "text": [fmt(a, path, stat), fmt(b, path, stat), ratio(a, b)]})
    return rows


def markdown(report: dict) -> str:
    m, c = report["machine"], report["config"]
    setup = (f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB, Python {m['python']}, {m['os']}, "
             f"load average at start {m['load_avg_at_start']}. Agent: `{c['agent']}`; baseline pipeline at "
             f"{c['baseline_rate']} Hz, turn end `{c['baseline_turn']}`; emulators `{c['providers']}`, latency "
             f"{c['latency_ms']} ms; {c['turns']} turns a call.\n")
    out = ["# voxline load benchmark\n", setup, f"Command: `{report['command']}`\n"]
    rows = report["comparison"]
    if rows:
        out += ["| N calls | metric | goal | voxline | baseline | ratio |", "|---|---|---|---|---|---|"]
        for r in rows:
            out.append(f"| {r['calls']} | {r['metric']} | {r['goal']} | " + " | ".join(r["text"]) + " |")
        out.append("")
    for name, res in report["results"].items():
        if "ramp" in res:
            rp = res["ramp"]
            out.append(f"- {name} ramp: largest N holding barge-in p95 ≤ {GOALS['barge_in_p95_ms']:.0f} ms, "
                       f"runtime overhead p95 ≤ {GOALS['overhead_p95_ms']:.0f} ms and no gaps: "
                       f"**{rp['max_calls_holding_goals']}** (levels tried: {rp['tried']})")
        if "soak" in res:
            s = res["soak"]
            out.append(f"- {name} soak: {s['calls']} calls ({s['lanes']} at a time, {s['errors']} failed), RSS "
                       f"{s['rss_mb_early_median']} → {s['rss_mb_late_median']} MB: **{s['rss_growth_pct']} %** growth")
        for lv in res.get("levels", []):
            if lv["errors"] or lv["missed_replies"] or lv["missed_clears"]:
                out.append(f"- {name} N={lv['calls']}: {len(lv['errors'])} call errors, {lv['missed_replies']} "
                           f"missed replies, {lv['missed_clears']} barge-ins without a `clear`")
    out.append("\nRatio: baseline ÷ voxline; every metric here is better lower, so above 1 voxline is better and "
               "below 1 it is worse (– where either is 0). Turn latency includes the "
               "turn-taking wait (VAD stop + silence timeout); runtime overhead is measured by the server "
               "(pipecat's UserBotLatencyObserver: user turn released → bot started speaking), read from a "
               "histogram (percentiles interpolated within 2.5–10 ms buckets).")
    return "\n".join(out) + "\n"


def plots(report: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    results = report["results"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, (key, title) in zip(axes, (("turn_ms", "turn latency (speech end → first agent media)"),
                                       ("barge_in_ms", "barge-in (speech onset → clear)"),
                                       ("overhead_runtime_ms", "runtime overhead (server, less LLM/TTS TTFB)"))):
        for name, style in (("voxline", "-"), ("baseline", "--")):
            for lv in results.get(name, {}).get("levels", []):
                if key == "overhead_runtime_ms":
                    xs, ys = bucket_cdf(lv["overhead_buckets"].get("runtime", []))
                    if 1.0 in ys:  # the buckets above the largest value say nothing
                        xs, ys = xs[:ys.index(1.0) + 1], ys[:ys.index(1.0) + 1]
                    xs, ys = [0.0, *xs], [0.0, *ys]
                else:
                    vals = sorted(lv["raw"][key])
                    xs = [vals[0], *vals] if vals else []
                    ys = [0.0, *((i + 1) / len(vals) for i in range(len(vals)))] if vals else []
                if xs:
                    ax.step(xs, ys, style, where="post", label=f"{name} N={lv['calls']}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of turns")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=110)
    plt.close(fig)
    made.append("latency_cdf.png")
    soaks = {name: res["soak"] for name, res in results.items() if "soak" in res}
    if soaks:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for name, s in soaks.items():
            ax.plot([i for i, _ in s["rss_by_call"]], [v for _, v in s["rss_by_call"]], label=name)
        ax.set_xlabel("calls completed")
        ax.set_ylabel("server RSS (MB)")
        ax.set_title("RSS over the soak")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "soak_rss.png", dpi=110)
        plt.close(fig)
        made.append("soak_rss.png")
    ramps = {name: res for name, res in results.items() if "ramp" in res}
    if ramps:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for name, res in ramps.items():
            ns = [lv["calls"] for lv in res["levels"]]
            ax.plot(ns, [lv["barge_in_ms"].get("p95") for lv in res["levels"]], "o-", label=f"{name} barge-in p95")
            ax.plot(ns, [lv["overhead_runtime_ms"].get("p95") for lv in res["levels"]], "s--",
                    label=f"{name} runtime overhead p95")
        ax.axhline(GOALS["barge_in_p95_ms"], color="grey", lw=0.8)
        ax.axhline(GOALS["overhead_p95_ms"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("concurrent calls")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "ramp.png", dpi=110)
        plt.close(fig)
        made.append("ramp.png")
    return made


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "os": platform.platform(terse=True),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


# --- main --------------------------------------------------------------------------------------------------------

async def bench_target(target: Target, args, plan: Plan, levels: list[int], log,
                       others: dict[str, psutil.Process] | None = None) -> dict:
    res: dict = {"levels": []}
    if not args.smoke:
        await warm_up(target, plan)
    if args.soak:
        log(f"{target.name}: soak of {args.soak} calls")
        res["soak"] = await soak(target, args.soak, args.soak_lanes, plan.question, log)
    best = 0
    for n in levels:
        log(f"{target.name}: {n} concurrent calls")
        level = await run_level(target, n, plan, connect_secs=args.connect_secs or max(1.0, 0.05 * n),
                                sample_every=0.25 if args.smoke else 0.5, others=others)
        res["levels"].append(level)
        log(f"  turn p50 {level['turn_ms'].get('p50')} ms, barge-in p95 {level['barge_in_ms'].get('p95')} ms, "
            f"overhead p95 {level['overhead_runtime_ms'].get('p95')} ms (total {level['overhead_ms'].get('p95')}), "
            f"gaps {level['pacing']['gaps_over_60ms']}, CPU/call {level['server']['cpu_pct_per_call_connected']} %, "
            f"RSS/call {level['server']['rss_mb_per_call']} MB, errors {len(level['errors'])}; "
            f"others' CPU % {level['others_cpu_pct_talking']}, generator loop lag p99 "
            f"{level['generator_loop_lag_ms'].get('p99')} ms")
        if args.ramp:
            if level["holds_goals"]:
                best = n
            elif n > best:
                break
    if args.ramp:
        res["ramp"] = {"max_calls_holding_goals": best, "tried": [lv["calls"] for lv in res["levels"]]}
    return res


async def amain(args) -> dict:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="voxline-bench-"))
    t_start = time.monotonic()
    log = (lambda *a: None) if args.quiet else (lambda msg: print(f"[{time.monotonic() - t_start:6.1f}s] {msg}",
                                                                  flush=True))
    targets = ["voxline", "baseline"] if args.target == "both" else [args.target]
    levels = [int(x) for x in args.ramp_levels.split(",")] if args.ramp else ([] if args.soak and not args.calls
                                                                              else [args.calls or 5])
    plan = Plan(turns=args.turns, spread=args.spread, hold=args.hold, question=synthesize(QUESTION),
                interruption=synthesize(INTERRUPTION))
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if not args.command else args.command,
        "machine": machine(), "goals": GOALS, "config": {
            "targets": targets, "agent": args.agent,
            "baseline_rate": 16000 if args.agent == "local" else args.baseline_rate,
            "baseline_turn": args.baseline_turn, "providers": args.providers, "latency_ms":
            args.latency_ms, "levels": levels, "turns": args.turns, "spread_s": args.spread, "hold_s": args.hold,
            "question": QUESTION, "interruption": INTERRUPTION, "soak": args.soak, "soak_lanes": args.soak_lanes},
        "results": {}, "work_dir": str(work)}
    log(f"emulators starting (work dir {work})")
    emulators = Emulators(work, args.latency_ms, fast=args.providers == "fast")
    try:
        for name in targets:
            log(f"{name}: starting")
            target = (Voxline(work, emulators, args.agent) if name == "voxline"
                      else Baseline(work, emulators, args.baseline_rate, args.baseline_turn, args.agent))
            mine = [2 if name == "voxline" else 1] if args.smoke else levels
            try:
                others = {"generator": psutil.Process()} | {f"emulator-{k}": p.ps for k, p in emulators.procs.items()}
                report["results"][name] = await bench_target(target, args, plan, mine, log, others)
            finally:
                target.stop()
    finally:
        emulators.stop()
    report["comparison"] = comparison(report["results"])
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "results.md").write_text(markdown(report))
    report["plots"] = [] if args.no_plots else plots(report, out)
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=("voxline", "baseline", "both"), default="both")
    ap.add_argument("--calls", type=int, default=0, help="concurrent calls (one level; default 5)")
    ap.add_argument("--ramp", action="store_true", help="run --ramp-levels until a level misses the goals")
    ap.add_argument("--ramp-levels", default="10,20,30,40,60,80,100,120,150,200")
    ap.add_argument("--soak", type=int, default=0, help="sequential short calls, RSS after each (e.g. 1000)")
    ap.add_argument("--soak-lanes", type=int, default=1, help="soak calls at a time (1: strictly sequential)")
    ap.add_argument("--smoke", action="store_true", help="2 voxline calls, 1 baseline call, 1 turn: seconds")
    ap.add_argument("--agent", choices=("cloud", "local"), default="cloud",
                    help="cloud: Deepgram + OpenAI + Cartesia emulators; local: Whisper + Piper in the server "
                         "(voxline's LLM scripted, the baseline's the OpenAI emulator; the baseline runs at 16 kHz)")
    ap.add_argument("--baseline-rate", type=int, default=8000, choices=(8000, 16000),
                    help="the baseline's pipeline rate (pipecat's Twilio examples: 8000)")
    ap.add_argument("--baseline-turn", choices=("silence", "smart"), default="silence",
                    help="the baseline's end of turn: VAD silence + 0.5 s like voxline, or pipecat's smart-turn")
    ap.add_argument("--latency-ms", type=int, default=0, help="emulated provider latency")
    ap.add_argument("--providers", choices=("fast", "full"), default="fast",
                    help="emulators with cheap models (loudness VAD, fixed transcript, cached Piper), or as shipped "
                         "(Silero + Whisper + Piper on every request: they compete with the server for the CPUs)")
    ap.add_argument("--turns", type=int, default=2, help="question + barge-in cycles per call")
    ap.add_argument("--spread", type=float, default=5.0, help="calls start talking within this many seconds")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds all calls stay connected and silent (CPU, RSS)")
    ap.add_argument("--connect-secs", type=float, default=0.0, help="spread connections over this (default 0.05 s/call)")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--keep-work", action="store_true", help="keep the servers' logs and data (work dir)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--command", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.turns, args.spread, args.hold, args.connect_secs = 1, 0.3, 1.5, 0.3
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = asyncio.run(amain(args))
    print((args.out / "results.md").read_text())
    return report


if __name__ == "__main__":
    main()
