"""Where a process's event loop went, from bench/loop_busy/sitecustomize.py's files.

    LOOP_BUSY_OUT=/tmp/lb PYTHONPATH=$PWD/bench/loop_busy .venv/bin/python bench/load.py --target voxline \\
        --calls 30 --turns 1 --hold 8 --no-plots --out /tmp/r
    .venv/bin/python bench/loop_busy.py /tmp/lb [--match "cli.py serve"] [--busy-over 45]

For each process whose command line contains `--match`: the loop's busy share for every second of the run, the
garbage collector's pauses (each of 10 ms or more at its second of the run), and the shares of the busy time by
task over the last stretch of seconds busier than `--busy-over` percent (in a load run: the talk burst; the connect
burst comes before it), or over `--seconds A-B`, with each task's steps (callbacks run) and time per step. With
`LOOP_BUSY_CPU=1` on the run, the times are the loop thread's CPU time rather than wall time (see the
sitecustomize), and `--per N` divides them by N (the calls of a load run) to give each task's cost per call.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def burst(per_second: dict[int, float], over_ms: float) -> list[int]:
    """The last run of seconds busier than over_ms (gaps of one second allowed)."""
    runs: list[list[int]] = []
    for second in sorted(s for s, ms in per_second.items() if ms > over_ms):
        if runs and second - runs[-1][-1] <= 2:
            runs[-1].append(second)
        else:
            runs.append([second])
    return runs[-1] if runs else []


def report(path: Path, match: str, busy_over: float, seconds: tuple[int, int] | None = None, per: int = 0) -> str:
    lines = []
    for file in sorted(path.glob("*.json")):
        data = json.loads(file.read_text())
        command = " ".join(data["argv"])
        if match not in command:
            continue
        per_second: dict[int, float] = collections.Counter()
        for second, _name, ms in data["busy"]:
            per_second[second] += ms
        if not per_second:
            continue
        first = min(per_second)
        lines.append(f"{file.stem}: {command[:100]}")
        lines.append("busy % per second: " + " ".join(f"{s - first}:{per_second[s] / 10:.0f}"
                                                       for s in range(first, max(per_second) + 1)))
        lines.append("gc (generation: count, total ms, max ms): " + ", ".join(
            f"{g}: {n}, {total:.0f}, {top:.0f}" for g, (n, total, top) in sorted(data["gc"].items())))
        if data.get("gc_long"):
            lines.append("gc pauses of 10 ms or more (second: generation, ms): " + ", ".join(
                f"{int(at) - first}: {g}, {ms:.0f}" for at, g, ms, _ in data["gc_long"]))
        window = ([first + seconds[0], first + seconds[1]] if seconds is not None
                  else burst(per_second, busy_over * 10))
        if not window:
            lines.append(f"no second busier than {busy_over:g} %")
            continue
        shares: dict[str, float] = collections.Counter()
        steps: dict[str, int] = collections.Counter()
        for second, name, ms in data["busy"]:
            if window[0] <= second <= window[-1]:
                shares[name] += ms
        for second, name, count in data.get("steps", []):  # files from before steps were counted have none
            if window[0] <= second <= window[-1]:
                steps[name] += count
        total = sum(shares.values())
        what = "ms of the loop thread's CPU" if data.get("clock") == "cpu" else "ms busy"
        lines.append(f"seconds {window[0] - first}–{window[-1] - first}: {total:.0f} {what}"
                     + (f" ({total / per:.1f} ms per call of {per})" if per else "") + "; by task:")
        for name, ms in shares.most_common(20 if per else 15):
            line = f"  {ms / total * 100:5.1f} %  {ms:7.0f} ms"
            if per:
                line += f"  {ms / per:6.2f} ms/call"
            if steps[name]:
                line += f"  {steps[name]:7d} steps  {ms / steps[name] * 1000:6.1f} µs/step"
            lines.append(f"{line}  {name}")
    return "\n".join(lines) or f"no process matching {match!r} in {path}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--match", default="cli.py serve", help="part of the command line of the processes to show")
    ap.add_argument("--busy-over", type=float, default=45.0, metavar="PCT")
    ap.add_argument("--seconds", default=None, metavar="A-B",
                    help="report these seconds of the run instead (e.g. the silent hold: see the busy %% line)")
    ap.add_argument("--per", type=int, default=0, metavar="N",
                    help="also divide each task's time by N (the run's calls): its cost per call")
    args = ap.parse_args()
    seconds = tuple(int(x) for x in args.seconds.split("-")) if args.seconds else None
    print(report(args.dir, args.match, args.busy_over, seconds, args.per))
