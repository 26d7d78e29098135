"""Two versions of the server under the same load at the same time: for changes smaller than this VM's drift.

    git worktree add /tmp/wt-old <rev>
    .venv/bin/python bench/side_by_side.py --old /tmp/wt-old [--calls 12] [--rounds 5] [--phase speaking|idle|talking]
                                           [--line-noise -60]
    .venv/bin/python bench/side_by_side.py --old . --old-env VOXLINE_EVENT_LOOP=asyncio   # one setting, same code

A shared VM's speed drifts by ±25 % from one minute to the next, so two runs one after the other cannot tell a
10–20 % change from the drift (earlier rounds' A/B tables show it). Here both servers run at once, the working tree
and `--old` (a checkout of another revision, its code put first on PYTHONPATH), each with `--calls` calls from the
same generator through the same emulators, so the drift falls on both alike. Each round connects the calls to
both, alternating; `speaking` and `idle` then wait 3 s and measure each server's CPU over 10 s.

- `speaking`: the agent's welcome is ~35 s long, so every call is hearing the agent and the caller is silent: the
  outbound path (TTS → output → carrier) on top of a connected call's inbound audio.
- `idle`: the welcome is short and over; connected calls streaming silence (or, with `--line-noise`, white noise
  at that level, which the VAD scores window by window): the inbound path alone.
- `talking`: the load benchmark's cycle, once per call, the calls starting within 3 s: a question, and 0.3 s into
  the reply an interruption, then silence until the agent has answered it and is quiet. The server's CPU from the
  first question to the last quiet, divided by the cycles: everything a turn costs (VAD, STT, turn rules, LLM, TTS,
  output, barge-in), and the connected calls' inbound audio over that window.

Per server: CPU µs per agent `media` message received (speaking), % of a core per call (idle), or CPU ms per
cycle (talking), and the ratio of the working tree to `--old`. The talking phase also gives each server's latency
over all rounds' cycles, timed as `bench/load.py` times them (turn, barge-in, and the runtime overhead from the
server's histogram): under the same load at the same moment, where runs one after the other differ by ±15 ms at
p95 from one minute to the next. Figures, never assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import processes  # noqa: E402
from loadgen import (  # noqa: E402
    INTERRUPTION, QUESTION, BenchCaller, Utterance, answered, line_noise, synthesize, time_barge_in, time_reply)
from report import bucket_delta, bucket_summary, overhead_buckets, summary  # noqa: E402

from telephony.twilio.caller import sid  # noqa: E402

SENTENCE = "We are at twelve Main Street, next to the old cinema, and we are open every day from noon until ten."


def agents(phase: str) -> None:
    if phase == "speaking":
        welcome = " ".join([SENTENCE] * 6)
        processes.AGENT_FILES["bench_cloud.yaml"] = processes.AGENT_FILES["bench_cloud.yaml"].replace(
            f"welcome_message: {processes.GREETING}", f"welcome_message: {welcome}")


def servers(work: Path, emulators: processes.Emulators, old: Path, old_env: dict[str, str]
            ) -> dict[str, processes.Voxline]:
    new = processes.Voxline(work / "new", emulators, "cloud")
    base_env = processes.base_env
    processes.base_env = lambda extra=None: base_env({**(extra or {}), "PYTHONPATH": str(old), **old_env})
    try:
        return {"new": new, "old": processes.Voxline(work / "old", emulators, "cloud")}
    finally:
        processes.base_env = base_env


def cpu_secs(target: processes.Voxline) -> float:
    times = target.proc.ps.cpu_times()
    return times.user + times.system


async def cycle(caller: BenchCaller, question: Utterance, interruption: Utterance) -> tuple[bool, dict]:
    """One question and its interruption; the cycle's turn latency and barge-in (ms, as bench/load.py times them)."""
    await asyncio.sleep(random.uniform(0.0, 3.0))
    sent_at = await caller.say(question.ulaw)
    turn_ms = await time_reply(caller, question, sent_at)
    if turn_ms is None:
        return False, {}
    await asyncio.sleep(0.3)
    timed = {"turn": turn_ms, "barge_in": await time_barge_in(caller, interruption)}
    return await answered(caller, interruption) and await caller.wait_agent_quiet(1.0, 30.0), timed


async def talk(callers: dict[str, list[BenchCaller]], targets: dict[str, processes.Voxline],
               speech: tuple[Utterance, Utterance], latency: dict[str, dict[str, list]]) -> dict[str, float]:
    """CPU ms per cycle per server; each cycle's latencies, and the servers' overhead histograms over the round,
    added to `latency`."""
    for group in callers.values():
        for caller in group:
            await caller.wait_agent_quiet(0.8, 30.0)
    buckets0 = {name: overhead_buckets(t.metrics_text()) for name, t in targets.items()}
    cpu0 = {name: cpu_secs(t) for name, t in targets.items()}
    names = [name for name, group in callers.items() for _ in group]
    done = await asyncio.gather(*(cycle(c, *speech) for group in callers.values() for c in group))
    cpu = {name: cpu_secs(t) - cpu0[name] for name, t in targets.items()}
    if not all(ok for ok, _ in done):
        raise RuntimeError(f"{sum(not ok for ok, _ in done)} cycles got no reply or never went quiet")
    for name, (_, timed) in zip(names, done):
        for key, value in timed.items():
            latency[name][key].append(value)
    for name, t in targets.items():
        delta = bucket_delta(buckets0[name], overhead_buckets(t.metrics_text())).get("runtime", [])
        before = dict(latency[name]["overhead"])  # cumulative buckets: the rounds' counts add up
        latency[name]["overhead"] = [(le, c + before.get(le, 0.0)) for le, c in delta]
    return {name: cpu[name] / len(callers[name]) * 1000 for name in targets}


def latency_line(figures: dict[str, list]) -> str:
    turn, barge = summary(figures["turn"]), summary(figures["barge_in"])
    overhead = bucket_summary(figures["overhead"])
    return (f"turn p50 / p95 / mean {turn.get('p50')} / {turn.get('p95')} / {turn.get('mean')} ms, barge-in "
            f"{barge.get('p50')} / {barge.get('p95')} / {barge.get('mean')} ms (missed "
            f"{sum(v is None for v in figures['barge_in'])}), runtime overhead p50 / p95 {overhead.get('p50')} / "
            f"{overhead.get('p95')} ms")


async def round_(targets: dict[str, processes.Voxline], client: httpx.AsyncClient, calls: int,
                 phase: str, speech: tuple[Utterance, Utterance] | None,
                 idle_frames: list[bytes] | None = None, latency: dict | None = None) -> dict[str, float]:
    callers: dict[str, list[BenchCaller]] = {name: [] for name in targets}
    for _ in range(calls):
        for name, target in targets.items():
            caller = BenchCaller(await target.answer(client), call_sid=sid("CA"))
            if idle_frames:
                caller.idle_frames = idle_frames
            await caller.__aenter__()
            callers[name].append(caller)
        await asyncio.sleep(0.02)
    if phase == "talking":
        try:
            return await talk(callers, targets, speech, latency)
        finally:
            for group in callers.values():
                for caller in group:
                    await caller.hang_up()
    if phase == "idle":
        for group in callers.values():
            for caller in group:
                await caller.wait_agent_quiet(0.8, 30.0)
    await asyncio.sleep(3.0)
    cpu0 = {name: cpu_secs(t) for name, t in targets.items()}
    media0 = {name: sum(len(c.media_times) for c in group) for name, group in callers.items()}
    t0 = time.monotonic()
    await asyncio.sleep(10.0)
    secs = time.monotonic() - t0
    cpu = {name: cpu_secs(t) - cpu0[name] for name, t in targets.items()}
    media = {name: sum(len(c.media_times) for c in group) - media0[name] for name, group in callers.items()}
    for group in callers.values():
        for caller in group:
            await caller.hang_up()
    if phase == "speaking":
        return {name: cpu[name] / max(1, media[name]) * 1e6 for name in targets}
    return {name: cpu[name] / secs / calls * 100 for name in targets}


async def main(args) -> None:
    agents(args.phase)
    work = Path(tempfile.mkdtemp(prefix="voxline-sbs-"))
    print(f"servers' logs in {work} (removed after a run that completes)", flush=True)
    emulators = processes.Emulators(work, 0)
    targets: dict[str, processes.Voxline] = {}
    unit = {"speaking": "µs CPU per agent media message", "idle": "% of a core per call",
            "talking": "ms CPU per cycle"}[args.phase]
    speech = (synthesize(QUESTION), synthesize(INTERRUPTION)) if args.phase == "talking" else None
    figures: dict[str, list[float]] = {"new": [], "old": []}
    latency = {name: {"turn": [], "barge_in": [], "overhead": []} for name in figures}
    try:
        targets = servers(work, emulators, args.old, dict(kv.split("=", 1) for kv in args.old_env))
        async with httpx.AsyncClient(timeout=30) as client:
            for target in targets.values():  # warm-up: lazy imports, the emulators' caches
                async with BenchCaller(await target.answer(client), call_sid=sid("CA")) as caller:
                    await caller.wait_agent_audio(0.0, 30.0)
                    await asyncio.sleep(3.0)
                    if speech:
                        # The reply too: the fast Cartesia emulator synthesizes a sentence the first time it is
                        # asked, once per concurrent request, so a cold first round had every call wait for Piper
                        # (TTFB up to 17 s at 20 calls each, contexts ending with no audio).
                        await caller.wait_agent_quiet(0.8, 30.0)
                        sent_at = await caller.say(speech[0].ulaw)
                        await caller.wait_agent_audio(sent_at, 20.0)
                        await caller.wait_agent_quiet(1.0, 30.0)
            idle_frames = line_noise(args.line_noise) if args.line_noise is not None else None
            for i in range(args.rounds):
                got = await round_(targets, client, args.calls, args.phase, speech, idle_frames, latency)
                for name, value in got.items():
                    figures[name].append(value)
                print(f"round {i + 1}: this tree {got['new']:.3g}, --old {got['old']:.3g} {unit}; "
                      f"ratio {got['new'] / got['old']:.3f}", flush=True)
                await asyncio.sleep(3.0)
    finally:
        for target in targets.values():
            target.stop()
        emulators.stop()
    shutil.rmtree(work, ignore_errors=True)  # kept when a round fails: the servers' logs are there
    ratios = [n / o for n, o in zip(figures["new"], figures["old"])]
    new, old = statistics.median(figures["new"]), statistics.median(figures["old"])
    noise = f" on lines with noise at {args.line_noise:g} dBFS" if args.line_noise is not None else ""
    print(f"{args.phase}{noise}, {args.calls} calls each, {args.rounds} rounds: this tree {new:.3g}, "
          f"--old {old:.3g} {unit} (medians); ratio median {statistics.median(ratios):.3f}, "
          f"range {min(ratios):.3f}–{max(ratios):.3f}")
    if args.phase == "talking":
        for name, label in (("new", "this tree"), ("old", "--old")):
            print(f"  {label}, all rounds' cycles: {latency_line(latency[name])}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="a checkout of the revision to compare against")
    ap.add_argument("--old-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the --old server only (e.g. --old . --old-env VOXLINE_EVENT_LOOP=asyncio)")
    ap.add_argument("--calls", type=int, default=12, help="calls to each server")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--phase", choices=("speaking", "idle", "talking"), default="speaking")
    ap.add_argument("--line-noise", type=float, default=None, metavar="DBFS",
                    help="white noise at this RMS level on the callers' lines instead of digital silence (e.g. -60)")
    args = ap.parse_args()
    if any("=" not in kv for kv in args.old_env):
        sys.exit("--old-env takes KEY=VALUE")
    if not (args.old / "runtime" / "cli.py").exists():
        sys.exit(f"--old {args.old}: not a voxline checkout")
    asyncio.run(main(args))
