"""Times every asyncio callback in any Python process started with this directory first on PYTHONPATH (an absolute
path: the benchmark's servers run in their own directories) and `LOOP_BUSY_OUT=DIR` set (not a VOXLINE_ name: the
load benchmark keeps those from its servers): the event loop's busy milliseconds per wall-clock second and per
task (a pipecat processor's tasks are named after it; with `LOOP_BUSY_METHODS=1`, after the processor and the
method, as "STTService::__input_frame_task_handler"), and the garbage collector's pauses (each of 10 ms or more
with its time). Written to DIR/<pid>.json every 2 s and at exit; `bench/loop_busy.py DIR` reads them. For finding
what a burst of calls spends the one event loop on: py-spy on this VM sampled threads blocked on a queue as busy,
and cannot say which processor a task serves. The timing itself costs ~1 µs per callback, so latency figures from
such a run are not the product's; and the server runs on asyncio's own loop then, not on uvloop (whose callbacks are
out of reach), which costs ~5 % more.

Each callback is timed on the wall clock by default: how long it held the loop, which is what every other call
waited. On a box whose cores are full that includes the time the loop's thread sat preempted (by the other worker,
the load generator, a model's thread), which falls on whatever task was running. With `LOOP_BUSY_CPU=1` each is
timed on the thread's CPU clock instead (`time.thread_time`): what each task costs, for finding what to make
cheaper, and comparable from one run to the next. The number of steps per task is kept either way, so the report
can give each one's cost per step.
"""

import os

if os.environ.get("LOOP_BUSY_OUT"):
    # uvloop (the server's default loop) runs its callbacks in C, out of reach of the timer below.
    os.environ.setdefault("VOXLINE_EVENT_LOOP", "asyncio")
    import asyncio
    import asyncio.events
    import collections
    import gc
    import json
    import re
    import threading
    import time

    _out = os.environ["LOOP_BUSY_OUT"]
    _busy: collections.Counter = collections.Counter()  # (unix second, task name) -> ms
    _steps: collections.Counter = collections.Counter()  # (unix second, task name) -> callbacks run
    _gc: dict = collections.defaultdict(lambda: [0, 0.0, 0.0])  # generation -> [count, total ms, max ms]
    _run = asyncio.events.Handle._run
    _clock = time.perf_counter
    _cpu_clock = bool(os.environ.get("LOOP_BUSY_CPU"))
    _step_clock = time.thread_time if _cpu_clock else time.perf_counter

    def _name(handle) -> str:
        task = getattr(handle._callback, "__self__", None)
        if isinstance(task, asyncio.Task):
            name = task.get_name()  # pipecat's: "Processor#3::method"; kept without the instance number
            return (re.sub(r"#\d+", "", name) if os.environ.get("LOOP_BUSY_METHODS") else name.split("#")[0])[:80] or "task"
        return getattr(handle._callback, "__qualname__", "callback")

    def _timed_run(self):
        t = _step_clock()
        _run(self)
        ms = (_step_clock() - t) * 1000
        key = (int(time.time()), _name(self))
        _busy[key] += ms
        _steps[key] += 1

    asyncio.events.Handle._run = _timed_run
    _gc_start = [0.0]
    _gc_long: list = []  # [unix time, generation, ms, objects collected] of pauses of 10 ms or more

    def _on_gc(phase, info):
        if phase == "start":
            _gc_start[0] = _clock()
        else:
            ms = (_clock() - _gc_start[0]) * 1000
            g = _gc[info["generation"]]
            g[0], g[1], g[2] = g[0] + 1, g[1] + ms, max(g[2], ms)
            if ms >= 10:
                _gc_long.append([time.time(), info["generation"], round(ms, 1), info["collected"]])

    gc.callbacks.append(_on_gc)

    _dump_lock = threading.Lock()  # the writer's snapshot must not replace the later one taken at exit

    def _dump() -> bool:
        import sys

        with _dump_lock:
            try:  # the loop thread adds to the counters meanwhile: a copy can fail, and is taken again
                busy = [[s, n, round(ms, 3)] for (s, n), ms in list(_busy.items())]
                steps = [[s, n, count] for (s, n), count in list(_steps.items())]
                data = {"argv": sys.argv, "clock": "cpu" if _cpu_clock else "wall", "busy": busy, "steps": steps,
                        "gc": {str(k): v for k, v in list(_gc.items())}, "gc_long": list(_gc_long)}
            except RuntimeError:
                return False
            os.makedirs(_out, exist_ok=True)
            tmp = f"{_out}/{os.getpid()}.json.tmp"
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, f"{_out}/{os.getpid()}.json")
            return True

    def _write():
        while True:
            time.sleep(2)
            _dump()

    def _last_dump():
        # The periodic writer alone loses up to its last 2 s, and on a starved box its sleep overruns a short
        # process's whole tail.
        while not _dump():
            pass

    import atexit

    atexit.register(_last_dump)
    threading.Thread(target=_write, daemon=True, name="loop-busy-writer").start()
