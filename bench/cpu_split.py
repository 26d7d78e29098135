"""Who had the cores, second by second, while a command ran: the box's idle and system time, and the CPU of every
thread of the benchmark's processes under it (the server's workers, the load generator, the emulators).

    .venv/bin/python bench/cpu_split.py [--out FILE.json] -- .venv/bin/python bench/load.py --target voxline \\
        --calls 80 --turns 1 --hold 8 --workers 2 --harness-nice 19 --no-plots --quiet --out /tmp/r

`bench/load.py` gives each process's CPU averaged over a phase; a talk burst's peak is a few seconds of it, and
what decides the latency there is who had the two cores in those seconds. Threads are named by process role and
thread: "worker:main" is every server worker's event loop thread together, and "worker:threads" their other threads
(the VAD's, SQLite's). Needs psutil (the bench extras). Figures, never assertions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

# A process's role, from its command line (the first match wins).
ROLES = (("multiprocessing-fork", "worker"), ("runtime.cli serve", "server"), ("runtime/cli.py serve", "server"),
         ("fast_providers.py", "emulator"), ("emulate", "emulator"), ("bench/load.py", "generator"))


def role(cmdline: str) -> str | None:
    for mark, name in ROLES:
        if mark in cmdline:
            if name == "emulator":  # which one: the argument after the script
                words = cmdline.split()
                for i, word in enumerate(words[:-1]):
                    if word.endswith("fast_providers.py") or word == "emulate":
                        return f"emulator-{words[i + 1]}"
            return name
    return None


def thread_seconds(root: psutil.Process) -> dict[tuple[int, int], tuple[str, float]]:
    """(pid, thread id) -> (role:main or role:threads, CPU seconds so far) for every thread of the processes under
    `root` (itself included) that have a role."""
    out: dict[tuple[int, int], tuple[str, float]] = {}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for proc in procs:
        try:
            name = role(" ".join(proc.cmdline()))
            threads = proc.threads() if name else []
        except psutil.Error:
            continue
        for thread in threads:
            label = f"{name}:{'main' if thread.id == proc.pid else 'threads'}"
            out[(proc.pid, thread.id)] = (label, thread.user_time + thread.system_time)
    return out


def sample(command: list[str], every: float = 1.0) -> tuple[int, list[dict]]:
    """Run `command`, sampling every `every` s until it exits; its exit status and the per-interval rows: the box's
    time by kind and each label's CPU, in seconds."""
    popen = subprocess.Popen(command)
    root = psutil.Process(popen.pid)
    rows: list[dict] = []
    box, threads, start = psutil.cpu_times(), thread_seconds(root), time.monotonic()
    while popen.poll() is None:
        time.sleep(every)
        box_now, threads_now = psutil.cpu_times(), thread_seconds(root)
        by_label: dict[str, float] = {}
        for key, (label, secs) in threads_now.items():
            grew = secs - threads.get(key, (label, 0.0))[1]  # a thread new since the last sample: all of its CPU
            if grew > 0:
                by_label[label] = round(by_label.get(label, 0.0) + grew, 3)
        rows.append({"second": round(time.monotonic() - start),
                     "box": {kind: round(getattr(box_now, kind) - getattr(box, kind), 3) for kind in box._fields},
                     "threads": by_label})
        box, threads = box_now, threads_now
    return popen.returncode, rows


def table(rows: list[dict], top: int = 6) -> str:
    lines = []
    for row in rows:
        box, total = row["box"], sum(row["box"].values()) or 1
        busiest = sorted(row["threads"].items(), key=lambda kv: -kv[1])[:top]
        lines.append(f"{row['second']:4d}s  idle {100 * box['idle'] / total:3.0f} %"
                     f"  system {100 * box['system'] / total:3.0f} %"
                     "  | " + ", ".join(f"{label} {secs:.2f}" for label, secs in busiest))
    return ("per interval: the box's idle and system share of its time, then each role's threads' CPU in seconds "
            "(1.00 a second is one core)\n" + "\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write the rows as JSON here too")
    ap.add_argument("--every", type=float, default=1.0, metavar="SECS")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    status, rows = sample(command, args.every)
    if args.out:
        args.out.write_text(json.dumps(rows))
    print(table(rows))
    return status


if __name__ == "__main__":
    sys.exit(main())
