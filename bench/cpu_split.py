"""Who had the cores, second by second, while a command ran: the box's idle and system time, and the CPU of every
thread of the benchmark's processes under it (the server's workers, the load generator, the emulators), from /proc.

    .venv/bin/python bench/cpu_split.py [--out FILE.json] -- .venv/bin/python bench/load.py --target voxline \\
        --calls 80 --turns 1 --hold 8 --workers 2 --harness-nice 19 --no-plots --quiet --out /tmp/r

`bench/load.py` gives each process's CPU averaged over a phase; a talk burst's peak is a few seconds of it, and
what decides the latency there is who had the two cores in those seconds. Threads are named by process role and
thread: "worker:main" is every server worker's event loop thread together, and "worker:python" their other threads
(the VAD's, SQLite's: Python does not name its threads for the OS). Linux only. Figures, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# A process's role, from its command line (the first match wins).
ROLES = (("multiprocessing-fork", "worker"), ("runtime.cli serve", "server"), ("runtime/cli.py serve", "server"),
         ("fast_providers.py", "emulator"), ("emulate", "emulator"), ("bench/load.py", "generator"))
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


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


def box_ticks() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:1 + len(STAT_FIELDS)]]


def descendants(root: int) -> set[str]:
    """`root` and every process under it (the command's server, workers and emulators), as /proc names."""
    children: dict[str, list[str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                children.setdefault(f.read().rsplit(")", 1)[1].split()[1], []).append(pid)
        except OSError:
            continue
    found, todo = set(), [str(root)]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def thread_ticks(root: int) -> dict[tuple[str, str], tuple[str, int]]:
    """(pid, tid) -> (role:thread name, user + system ticks so far) for every thread of a process with a role under
    `root`."""
    out: dict[tuple[str, str], tuple[str, int]] = {}
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                name = role(f.read().replace(b"\0", b" ").decode(errors="replace"))
            if name is None:
                continue
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            label = f"{name}:{'main' if tid == pid else comm}"
            out[(pid, tid)] = (label, int(fields[11]) + int(fields[12]))  # utime, stime
    return out


def sample(command: list[str], every: float = 1.0) -> tuple[int, list[dict]]:
    """Run `command`, sampling every `every` s until it exits; its exit status and the per-interval rows (ticks)."""
    proc = subprocess.Popen(command)
    rows: list[dict] = []
    box, threads, start = box_ticks(), thread_ticks(proc.pid), time.monotonic()
    while proc.poll() is None:
        time.sleep(every)
        box_now, threads_now = box_ticks(), thread_ticks(proc.pid)
        by_label: dict[str, int] = {}
        for key, (label, ticks) in threads_now.items():
            grew = ticks - threads.get(key, (label, 0))[1]  # a thread new since the last sample: all of its CPU
            if grew:
                by_label[label] = by_label.get(label, 0) + grew
        rows.append({"second": round(time.monotonic() - start), "box": dict(zip(STAT_FIELDS, (
            a - b for a, b in zip(box_now, box)))), "threads": by_label})
        box, threads = box_now, threads_now
    return proc.returncode, rows


def table(rows: list[dict], top: int = 6) -> str:
    lines = []
    for row in rows:
        box, total = row["box"], sum(row["box"].values()) or 1
        busiest = sorted(row["threads"].items(), key=lambda kv: -kv[1])[:top]
        lines.append(f"{row['second']:4d}s  idle {100 * box['idle'] / total:3.0f} %"
                     f"  system {100 * box['system'] / total:3.0f} %"
                     "  | " + ", ".join(f"{label} {ticks}" for label, ticks in busiest))
    tick = os.sysconf("SC_CLK_TCK")
    return (f"per second: the box's idle and system share, then each thread's CPU in ticks ({tick} a second is one "
            "core)\n" + "\n".join(lines))


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
