"""Load benchmark: voxline against a stock pipecat 1.14 Twilio bot, driven by the same Twilio-side caller.

    .venv/bin/python bench/load.py --target both --calls 20 --out bench-out
    .venv/bin/python bench/load.py --target both --ramp --out bench-out            # largest N holding the goals
    .venv/bin/python bench/load.py --target both --soak 1000 --out bench-out       # RSS over sequential calls
    .venv/bin/python bench/load.py --smoke --out /tmp/smoke                        # ~70 s: keeps the harness working

It starts everything itself on free loopback ports: the provider emulators (`voxline emulate deepgram|openai|
cartesia`, each its own process, `--latency-ms` 0 by default), then for each target in turn the server under test
(`voxline serve` with a Deepgram + OpenAI + Cartesia agent pointed at the emulators, or the keyless demo-style agent
with `--agent local`; `bench/baseline_bot.py` for the baseline), runs the calls, samples the server process's CPU
and RSS (psutil), and stops it. Only the server process is measured; the emulators and this generator are not.

Each call: the caller connects (voxline: the signed-less voice webhook, then the stream; baseline: its socket),
hears the greeting, and waits until every call is connected and quiet; CPU and RSS are sampled over that "hold"
(N connected calls streaming silence at 20 ms pacing). Then each call, at a random offset within `--spread`
seconds, runs `--turns` cycles of: a question (turn latency: last loud caller frame → first agent `media`), and
0.3 s into the reply an interruption (barge-in: first loud caller frame → `clear`), then silence until the agent has
answered the interruption (a missed reply if it has not within 20 s) and is quiet. Runtime overhead comes from the
server: its end-of-turn decision → first agent audio, from pipecat's UserBotLatencyObserver in both servers
(`voxline_turn_overhead_seconds` on `/metrics`, read before and after each level); `part=runtime` takes the LLM's
and the TTS's time to first byte out, which is the emulators' own time.

Outputs in --out: results.json (everything, per call and aggregated), results.md (voxline vs baseline and their
ratio) and PNG plots (latency CDFs by N, RSS over the soak) when matplotlib is installed (the `bench` extra).
Figures, never assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# the modules next to this one (the script's directory is on sys.path when run as `python bench/load.py`)
import harness_loop  # noqa: E402
from loadgen import (  # noqa: E402
    INTERRUPTION, QUESTION, Plan, arrivals, line_noise, run_level, soak, synthesize, warm_up)
from processes import Baseline, Emulators, Target, Voxline, idle_harness, nice_harness, policy  # noqa: E402
from report import GOALS, comparison, markdown, plots  # noqa: E402


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "os": platform.platform(terse=True),
            # which build: the same version takes ~5-18 % less CPU from a PGO+LTO build (README, Performance)
            "python_executable": os.path.realpath(sys.executable),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


# --- main --------------------------------------------------------------------------------------------------------

async def bench_target(target: Target, args, plan: Plan, levels: list[int], log,
                       others: dict[str, psutil.Process] | None = None) -> dict:
    res: dict = {"levels": []}
    # The smoke mode too: without it, its one counted turn carried the emulators' first (real) Piper synthesis of
    # the reply, 2 s here and 5 s on a loaded CI machine, which once pushed both calls' barge-ins out of the window.
    await warm_up(target, plan)
    if args.soak:
        log(f"{target.name}: soak of {args.soak} calls")
        res["soak"] = await soak(target, args.soak, args.soak_lanes, plan.question, log)
    if args.arrivals:
        log(f"{target.name}: calls arriving at {args.arrivals:g} a second for {args.arrival_secs:g} s")
        res["arrivals"] = level = await arrivals(target, plan, args.arrivals, args.arrival_secs, others=others)
        a = level["arrivals"]
        log(f"  offered {a['offered']}, let in {a['let_in']} (at once: most {a['most_at_once']}, mean "
            f"{a['mean_at_once']}), refused {level['refused']}, errors {len(level['errors'])}; turn p50 "
            f"{level['turn_ms'].get('p50')} ms, barge-in p95 {level['barge_in_ms'].get('p95')} ms, overhead p95 "
            f"{level['overhead_runtime_ms'].get('p95')} ms, underruns {level['pacing']['underruns']}; the calls let "
            f"in held the goals: {level['admitted_hold_goals']}")
    best = 0
    for n in levels:
        log(f"{target.name}: {n} concurrent calls")
        level = await run_level(target, n, plan, connect_secs=args.connect_secs or max(1.0, 0.05 * n),
                                sample_every=0.25 if args.smoke else 0.5, others=others)
        res["levels"].append(level)
        log(f"  turn p50 {level['turn_ms'].get('p50')} ms, barge-in p95 {level['barge_in_ms'].get('p95')} ms, "
            f"overhead p95 {level['overhead_runtime_ms'].get('p95')} ms (total {level['overhead_ms'].get('p95')}), "
            f"late gaps {level['pacing']['late_gaps']}, underruns {level['pacing']['underruns']}, "
            f"CPU/call {level['server']['cpu_pct_per_call_connected']} %, "
            f"RSS/call {level['server']['rss_mb_per_call']} MB, errors {len(level['errors'])}, "
            f"refused {level['refused']} (the rest held the goals: {level['admitted_hold_goals']}); "
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


def split_cpus(spec: str | None) -> tuple[set[int] | None, set[int] | None]:
    """`--server-cpus`: the server's CPUs, and the rest of this process's for the generator and the emulators, so
    that on a bigger host the server is measured on the cores it was given, with the load not taking from them."""
    if not spec:
        return None, None
    try:
        server = {int(c) for c in spec.split(",") if c.strip()}
    except ValueError:
        sys.exit(f"--server-cpus {spec!r}: a comma-separated list of CPU numbers, e.g. 0,1")
    available = os.sched_getaffinity(0)
    if not server or not server <= available:
        sys.exit(f"--server-cpus {spec!r}: not among this process's CPUs {sorted(available)}")
    harness = available - server
    if not harness:
        sys.exit(f"--server-cpus {spec!r}: no CPU left for the load generator and the emulators "
                 f"(this process may use {sorted(available)})")
    return server, harness


async def amain(args) -> dict:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="voxline-bench-"))
    t_start = time.monotonic()
    log = (lambda *a: None) if args.quiet else (lambda msg: print(f"[{time.monotonic() - t_start:6.1f}s] {msg}",
                                                                  flush=True))
    targets = ["voxline", "baseline"] if args.target == "both" else [args.target]
    levels = [int(x) for x in args.ramp_levels.split(",")] if args.ramp else (
        [] if (args.soak or args.arrivals) and not args.calls else [args.calls or 5])
    server_cpus, harness_cpus = split_cpus(args.server_cpus)
    if harness_cpus:
        os.sched_setaffinity(0, harness_cpus)  # this generator; the emulators are pinned as they start
    # Before the emulators start, which inherit it; the servers are set back as they start.
    server_nice = nice_harness(args.harness_nice) if args.harness_nice else None
    if args.harness_idle:
        idle_harness()
    plan = Plan(turns=args.turns, spread=args.spread, hold=args.hold, barge_in_after=args.barge_in_after,
                question=synthesize(QUESTION, cache=args.audio_cache),
                interruption=synthesize(INTERRUPTION, cache=args.audio_cache),
                idle_frames=line_noise(args.line_noise) if args.line_noise is not None else None)
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if not args.command else args.command,
        "machine": machine(), "goals": GOALS, "config": {
            "targets": targets, "agent": args.agent,
            "baseline_rate": 16000 if args.agent == "local" else args.baseline_rate,
            "baseline_turn": args.baseline_turn, "providers": args.providers, "latency_ms": args.latency_ms,
            "llm_token_ms": args.llm_token_ms, "levels": levels, "turns": args.turns, "spread_s": args.spread,
            "hold_s": args.hold,
            "barge_in_after_s": args.barge_in_after, "voxline_vad_batch_ms": os.environ.get("VOXLINE_VAD_BATCH_MS"),
            "question": QUESTION, "interruption": INTERRUPTION, "soak": args.soak, "soak_lanes": args.soak_lanes,
            "arrivals_per_s": args.arrivals, "arrival_secs": args.arrival_secs,
            "line_noise_dbfs": args.line_noise, "voxline_turn_silence_s": args.turn_silence,
            "voxline_turn_sentence_end": args.turn_sentence_end,
            "voxline_workers": args.workers, "voxline_only_agent": args.only_agent,
            "audio_cache": str(args.audio_cache) if args.audio_cache else None,
            "server_cpus": sorted(server_cpus) if server_cpus else None,
            "harness_cpus": sorted(harness_cpus) if harness_cpus else None, "harness_nice": args.harness_nice,
            "harness_idle": args.harness_idle},
        "results": {}, "work_dir": str(work)}
    log(f"emulators starting (work dir {work})")
    emulators = Emulators(work, args.latency_ms, fast=args.providers == "fast", cpus=harness_cpus,
                          audio_cache=args.audio_cache, token_ms=args.llm_token_ms)
    try:
        for name in targets:
            log(f"{name}: starting")
            target = (Voxline(work, emulators, args.agent, args.turn_silence, args.workers, args.turn_sentence_end,
                              cpus=server_cpus, only_agent=args.only_agent, nice=server_nice,
                              sched_other=args.harness_idle)
                      if name == "voxline" else
                      Baseline(work, emulators, args.baseline_rate, args.baseline_turn, args.agent, cpus=server_cpus,
                               nice=server_nice, sched_other=args.harness_idle))
            mine = [2 if name == "voxline" else 1] if args.smoke else levels
            try:
                others = {"generator": psutil.Process()} | {f"emulator-{k}": p.ps for k, p in emulators.procs.items()}
                report["results"][name] = await bench_target(target, args, plan, mine, log, others)
                report["results"][name]["cpu_affinity"] = {
                    "server": target.proc.cpu_affinity(), "generator": sorted(os.sched_getaffinity(0)),
                    **{f"emulator-{k}": p.cpu_affinity() for k, p in emulators.procs.items()}}
                report["results"][name]["niceness"] = {
                    **target.proc.niceness("server"),
                    "generator": os.getpriority(os.PRIO_PROCESS, 0),
                    **{f"emulator-{k}": p.ps.nice() for k, p in emulators.procs.items()}}
                report["results"][name]["scheduling"] = {
                    **target.proc.scheduling("server"), "generator": policy(),
                    **{f"emulator-{k}": policy(p.ps.pid) for k, p in emulators.procs.items()}}
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
    ap.add_argument("--arrivals", type=float, default=0.0, metavar="RATE",
                    help="calls arriving at random, RATE a second on average, each talking --turns cycles once "
                         "greeted and hanging up (a phone line's traffic; with VOXLINE_MAX_CALLS or "
                         "VOXLINE_SHED_LOOP_LAG_MS set, the server turns some away)")
    ap.add_argument("--arrival-secs", type=float, default=60.0, help="how long calls keep arriving (--arrivals)")
    ap.add_argument("--smoke", action="store_true", help="a warm-up call, then 2 voxline calls, 1 baseline call, 1 turn: ~70 s")
    ap.add_argument("--agent", choices=("cloud", "local"), default="cloud",
                    help="cloud: Deepgram + OpenAI + Cartesia emulators; local: Whisper + Piper in the server "
                         "(voxline's LLM scripted, the baseline's the OpenAI emulator; the baseline runs at 16 kHz)")
    ap.add_argument("--baseline-rate", type=int, default=8000, choices=(8000, 16000),
                    help="the baseline's pipeline rate (pipecat's Twilio examples: 8000)")
    ap.add_argument("--baseline-turn", choices=("silence", "smart"), default="silence",
                    help="the baseline's end of turn: VAD silence + 0.5 s like voxline, or pipecat's smart-turn")
    ap.add_argument("--latency-ms", type=int, default=0, help="emulated provider latency")
    ap.add_argument("--llm-token-ms", type=int, default=0,
                    help="the OpenAI emulator's pace between a reply's chunks (default 0: all at once; a real model "
                         "writes a token every ~10-20 ms, which the first clause of a reply waits for)")
    ap.add_argument("--providers", choices=("fast", "full"), default="fast",
                    help="emulators with cheap models (loudness VAD, fixed transcript, cached Piper), or as shipped "
                         "(Silero + Whisper + Piper on every request: they compete with the server for the CPUs)")
    ap.add_argument("--turn-silence", type=float, default=None, metavar="SECS",
                    help="voxline agents' turn.silence_secs (default: the agent default, 0.7 s, which matches the "
                         "baseline's VAD stop 0.2 s + 0.5 s)")
    ap.add_argument("--turn-sentence-end", default=None, metavar="SECS|null",
                    help="voxline agents' turn.sentence_end_secs (default: the agent default, 0.3 s; null: off)")
    ap.add_argument("--workers", type=int, default=1, help="voxline server processes (`serve --workers`)")
    ap.add_argument("--server-cpus", default=None, metavar="LIST",
                    help="pin the server under test to these CPUs (e.g. 0,1), and the load generator and the "
                         "emulators to the others: a 2-core server measured on a bigger host")
    ap.add_argument("--harness-nice", type=int, default=0, metavar="N",
                    help="run the load generator and the emulators N nicer than the server under test (1-19; "
                         "needs root or CAP_SYS_NICE): where they share its cores, they then take what it leaves, "
                         "as if they ran elsewhere")
    ap.add_argument("--harness-idle", action="store_true",
                    help="run the load generator and the emulators under SCHED_IDLE, and the server under test "
                         "under SCHED_OTHER (needs root or CAP_SYS_NICE): where they share its cores, a thread of "
                         "the load gives its core up as soon as a server thread wakes, which niceness alone does "
                         "not promise")
    ap.add_argument("--only-agent", action="store_true",
                    help="give the voxline server only the agent under test (by default it has both bench agents "
                         "and loads Whisper and Piper at start-up): with --agent cloud it then loads no local model, "
                         "for a host without them")
    ap.add_argument("--audio-cache", type=Path, default=None, metavar="DIR",
                    help="keep the caller's speech (espeak-ng) and the emulated voice (Piper) in DIR as bytes, and "
                         "replay them from there: a host without espeak-ng or Piper runs on a DIR filled elsewhere")
    ap.add_argument("--line-noise", type=float, default=None, metavar="DBFS",
                    help="white noise at this RMS level (e.g. -60) on the callers' lines between utterances, "
                         "instead of digital silence: the VAD then scores every window")
    ap.add_argument("--turns", type=int, default=2, help="question + barge-in cycles per call")
    ap.add_argument("--spread", type=float, default=5.0, help="calls start talking within this many seconds")
    ap.add_argument("--barge-in-after", type=float, default=0.3, metavar="SECS",
                    help="seconds into the agent's reply the caller speaks over it (default 0.3; the reply is ~6 s)")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds all calls stay connected and silent (CPU, RSS)")
    ap.add_argument("--connect-secs", type=float, default=0.0, help="spread connections over this (default 0.05 s/call)")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--keep-work", action="store_true", help="keep the servers' logs and data (work dir)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--command", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 0 <= args.harness_nice <= 19:
        ap.error("--harness-nice: 0 (off) to 19")
    if args.smoke:
        args.turns, args.spread, args.hold, args.connect_secs = 1, 0.3, 1.5, 0.3
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = harness_loop.run(amain(args))
    print((args.out / "results.md").read_text())
    return report


if __name__ == "__main__":
    main()
