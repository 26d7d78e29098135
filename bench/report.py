"""The load benchmark's figures: percentiles of measured values and of the server's overhead histogram, one level's
aggregate, the goals, the voxline-vs-baseline comparison, the Markdown report and the plots. Used by bench/load.py."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadgen import CallResult

GOALS = {"barge_in_p95_ms": 250.0, "overhead_p95_ms": 30.0}


def summary(values: list[float]) -> dict:
    """n, p50/p95/p99 (nearest rank: always a measured value), max, mean; {"n": 0} when empty."""
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return {"n": 0}

    def pick(q: float) -> float:
        return vals[max(0, min(len(vals) - 1, math.ceil(q * len(vals)) - 1))]

    return {"n": len(vals), "p50": round(pick(0.50), 1), "p95": round(pick(0.95), 1), "p99": round(pick(0.99), 1),
            "max": round(vals[-1], 1), "mean": round(sum(vals) / len(vals), 1)}


# --- server-side overhead from /metrics -------------------------------------------------------------------------------

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


# --- one level --------------------------------------------------------------------------------------------------------

def level_figures(n: int, results: list[CallResult], delta: dict[str, list[tuple[float, float]]], idle: dict,
                  hold: dict, talk: dict, others_cpu: dict, loop_lag: dict) -> dict:
    """A level's metrics from its calls, the server's overhead histogram over the level (`delta`) and the server's
    CPU/RSS windows: idle before the calls, the hold (all connected, silent), the talk."""
    connected = sum(r.connected and not (r.error or "").startswith("connect") for r in results)
    per = max(1, connected)
    cpu_idle = idle["cpu_pct"] or 0.0
    all_of = lambda key: [v for r in results for v in getattr(r, key)]  # noqa: E731
    level = {
        "calls": n,
        "connected": connected,
        "refused": sum(r.refused for r in results),
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
            "late_gaps": sum(r.late_gaps for r in results),
            "underruns": sum(r.underruns for r in results),
            "max_gap_ms": round(max((r.max_gap_ms for r in results), default=0.0), 1),
            "max_lead_ms": round(max((r.max_lead_ms for r in results), default=0.0), 1),
            "bursts": sum(r.bursts for r in results),
            "calls_with_gaps": sum(1 for r in results if r.late_gaps),
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
        "others_cpu_pct_talking": others_cpu,
        "generator_loop_lag_ms": loop_lag,
        "per_call": [asdict(r) | {"interarrival_ms": None} for r in results],
        "raw": {"turn_ms": all_of("turn_ms"), "barge_in_ms": all_of("barge_in_ms")},
    }
    level["holds_goals"] = holds_goals(level)
    # With the server turning calls away, whether the calls it took held the goals (holds_goals wants them all).
    level["admitted_hold_goals"] = holds_goals({**level, "calls": level["calls"] - level["refused"]})
    return level


def holds_goals(level: dict) -> bool:
    """A barge-in that never got its `clear` has no latency to put in the p95, so it fails the level outright
    rather than leaving the percentile to the barge-ins that worked."""
    b, o = level["barge_in_ms"], level["overhead_runtime_ms"]
    return (level["connected"] == level["calls"] and not level["errors"] and b.get("n", 0) > 0
            and b["p95"] <= GOALS["barge_in_p95_ms"] and o.get("n", 0) > 0 and o["p95"] <= GOALS["overhead_p95_ms"]
            and level["pacing"]["underruns"] == 0 and level["missed_replies"] == 0 and level["missed_clears"] == 0)


# --- voxline vs baseline: the table, the Markdown, the plots ----------------------------------------------------------

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
    ("outbound gaps 40 ms later than the audio before them (> 60 ms between 20 ms messages; count)",
     ("pacing", "late_gaps"), None, ""),
    ("outbound underruns: audible gaps (count)", ("pacing", "underruns"), None, "0"),
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
    noise = c.get("line_noise_dbfs")
    line = "digital silence" if noise is None else f"white noise at {noise:g} dBFS"
    python = m['python'] + (f" ({m['python_executable']})" if m.get("python_executable") else "")
    setup = (f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB, Python {python}, {m['os']}, "
             f"load average at start {m['load_avg_at_start']}. Agent: `{c['agent']}`; baseline pipeline at "
             f"{c['baseline_rate']} Hz, turn end `{c['baseline_turn']}`; emulators `{c['providers']}`, latency "
             f"{c['latency_ms']} ms; {c['turns']} turns a call; the callers' lines between utterances: {line}.\n")
    if c.get("server_cpus"):
        setup += (f"\nThe server under test ran on CPUs {c['server_cpus']}, the load generator and the emulators on "
                  f"{c['harness_cpus']}.\n")
    if c.get("harness_nice"):
        seen = "; ".join(f"{name}: " + ", ".join(f"{who} {n}" for who, n in res.get("niceness", {}).items())
                         for name, res in report["results"].items())
        setup += (f"\nThe load generator and the emulators ran {c['harness_nice']} nicer than the servers under test, "
                  f"so that where they share its cores they take what the server leaves (niceness as run: {seen}).\n")
    if c.get("harness_idle"):
        seen = "; ".join(f"{name}: " + ", ".join(f"{who} {p}" for who, p in res.get("scheduling", {}).items())
                         for name, res in report["results"].items())
        setup += ("\nThe load generator and the emulators ran under SCHED_IDLE and the servers under test under "
                  "SCHED_OTHER, so that where they share its cores the load gives a core up as soon as a server "
                  f"thread wakes (policies as run: {seen}).\n")
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
        if "arrivals" in res:
            lv, a = res["arrivals"], res["arrivals"]["arrivals"]
            out.append(f"- {name} arrivals: {a['offered']} calls at {a['rate_per_s']:g} a second over "
                       f"{a['secs']:g} s, {a['let_in']} let in (at once: most {a['most_at_once']}, mean "
                       f"{a['mean_at_once']}), {lv['refused']} refused, {len(lv['errors'])} failed; turn p50 / p95 "
                       f"{lv['turn_ms'].get('p50')} / {lv['turn_ms'].get('p95')} ms, barge-in p95 "
                       f"{lv['barge_in_ms'].get('p95')} ms, runtime overhead p95 "
                       f"{lv['overhead_runtime_ms'].get('p95')} ms, {lv['pacing']['underruns']} underruns: the calls "
                       f"let in held the goals: **{lv['admitted_hold_goals']}**")
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


def cdf_runs(results: dict, name: str) -> list[tuple[dict, str]]:
    """A target's runs for the latency CDFs, each with its legend: every level, and an arrivals run's calls let in
    as one (it has no levels, and its plot was empty)."""
    runs = [(lv, f"{name} N={lv['calls']}") for lv in results.get(name, {}).get("levels", [])]
    arrived = results.get(name, {}).get("arrivals")
    if arrived:
        runs.append((arrived, f"{name} arrivals, {arrived['arrivals']['let_in']} let in"))
    return runs


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
            for lv, label in cdf_runs(results, name):
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
                    ax.step(xs, ys, style, where="post", label=label)
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
