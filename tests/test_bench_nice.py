"""`bench/load.py --harness-nice N`: the load generator (every thread of it) and the processes it starts after it run
N nicer, the servers under test at the niceness the generator had, and the report says so; `--harness-idle`: the
same under SCHED_IDLE, the servers under SCHED_OTHER. Run in a child process, so that this test run's own niceness
and policy are left as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

# A thread that exists before the harness is set: every thread is set, not only the caller.
_PREAMBLE = textwrap.dedent("""
    import json, os, sys, tempfile, threading, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from processes import Proc, idle_harness, nice_harness, policy
    helper = threading.Thread(target=time.sleep, args=(5,), daemon=True)
    helper.start()
    start = os.getpriority(os.PRIO_PROCESS, 0)
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    log = Path(tempfile.mkdtemp())
""")

CHILD = _PREAMBLE + textwrap.dedent("""
    kept = nice_harness(5)
    emulator = Proc("emulator", sleeper, dict(os.environ), log / "emulator.log")
    server = Proc("server", sleeper, dict(os.environ), log / "server.log", nice=kept)
    threads = {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}
    print(json.dumps({"start": start, "kept": kept, "threads": list(threads.values()),
                      "emulator": emulator.niceness("e")["e"], "server": server.niceness("s")["s"]}))
    emulator.stop(); server.stop()
""")


IDLE_CHILD = _PREAMBLE + textwrap.dedent("""
    idle_harness()
    emulator = Proc("emulator", sleeper, dict(os.environ), log / "emulator.log")
    server = Proc("server", sleeper, dict(os.environ), log / "server.log", sched_other=True)
    threads = [os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")]
    print(json.dumps({"threads": threads, "idle": os.SCHED_IDLE, "other": os.SCHED_OTHER,
                      "generator": policy(), "emulator": emulator.scheduling("e")["e"],
                      "server": server.scheduling("s")["s"], "server_nice": server.niceness("s")["s"],
                      "start": start}))
    emulator.stop(); server.stop()
""")


def _allowed(change_and_undo) -> bool:
    """Whether this process may change a child's scheduling and set it back (`change_and_undo(pid)`)."""
    probe = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        change_and_undo(probe.pid)
        return True
    except PermissionError:
        return False
    finally:
        probe.kill()
        probe.wait()


def _may_leave_sched_idle() -> bool:
    def idle_and_back(pid: int) -> None:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))

    return _allowed(idle_and_back)


def _may_lower_niceness() -> bool:
    def nicer_and_back(pid: int) -> None:
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, pid, min(19, mine + 1))
        os.setpriority(os.PRIO_PROCESS, pid, mine)

    return _allowed(nicer_and_back)


def test_the_load_runs_nicer_and_the_server_keeps_the_generators_niceness():
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "bench")], capture_output=True, text=True,
                          timeout=60, check=False)
    if not _may_lower_niceness():
        # Without root or CAP_SYS_NICE the server cannot be set back: the run stops before measuring, saying why.
        assert proc.returncode != 0 and "needs root or CAP_SYS_NICE" in proc.stderr, proc.stderr[-2000:]
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    nicer = min(19, seen["start"] + 5)
    assert seen["kept"] == seen["start"]
    assert len(seen["threads"]) >= 2 and set(seen["threads"]) == {nicer}, seen
    assert seen["emulator"] == nicer, seen  # inherited from the generator
    assert seen["server"] == seen["start"], seen


def test_an_idle_load_runs_under_sched_idle_and_the_server_under_sched_other():
    proc = subprocess.run([sys.executable, "-c", IDLE_CHILD, str(ROOT / "bench")], capture_output=True, text=True,
                          timeout=60, check=False)
    if not _may_leave_sched_idle():
        assert proc.returncode != 0 and "--harness-idle: server could not be set back" in proc.stderr, \
            proc.stderr[-2000:]
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert len(seen["threads"]) >= 2 and set(seen["threads"]) == {seen["idle"]}, seen
    assert seen["generator"] == "idle" and seen["emulator"] == "idle", seen  # the emulator inherited it
    assert seen["server"] == "other", seen
    assert seen["server_nice"] == seen["start"], seen


def _report(config: dict, voxline: dict) -> dict:
    return {
        "machine": {"cpus": 2, "cpu_model": "x", "memory_gb": 1, "python": "3.11", "os": "Linux",
                    "load_avg_at_start": 0.0},
        "config": {"agent": "cloud", "baseline_rate": 8000, "baseline_turn": "silence", "providers": "fast",
                   "latency_ms": 0, "turns": 1, **config},
        "command": "load.py", "comparison": [], "results": {"voxline": voxline},
    }


def _markdown(report: dict) -> str:
    sys.path.insert(0, str(ROOT / "bench"))
    from report import markdown

    return markdown(report)


def test_the_report_names_the_niceness_each_process_ran_at():
    report = _report({"harness_nice": 19}, {"niceness": {"server": 0, "generator": 19, "emulator-openai": 19}})
    md = _markdown(report)
    assert "ran 19 nicer than the servers under test" in md
    assert "voxline: server 0, generator 19, emulator-openai 19" in md
    report["config"]["harness_nice"] = 0
    assert "nicer" not in _markdown(report)


def test_the_report_names_the_policy_each_process_ran_under():
    report = _report({"harness_idle": True},
                     {"scheduling": {"server": "other", "generator": "idle", "emulator-openai": "idle"}})
    md = _markdown(report)
    assert "ran under SCHED_IDLE and the servers under test under SCHED_OTHER" in md
    assert "voxline: server other, generator idle, emulator-openai idle" in md
    report["config"]["harness_idle"] = False
    assert "SCHED_IDLE" not in _markdown(report)


def test_the_report_names_the_interpreter_it_ran_on():
    # The same CPython version differs by build (PGO+LTO or not) by up to a fifth of the server's CPU.
    report = _report({}, {})
    report["machine"]["python_executable"] = "/usr/bin/python3.11"
    assert "Python 3.11 (/usr/bin/python3.11)," in _markdown(report)
    del report["machine"]["python_executable"]  # a report from before it was recorded
    assert "Python 3.11, Linux" in _markdown(report)
