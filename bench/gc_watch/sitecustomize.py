"""Counts, in any Python process started with this directory first on PYTHONPATH (an absolute path) and
`GC_WATCH_OUT=DIR` set (not a VOXLINE_ name: the load benchmark keeps those from its servers), the garbage
collector's work and how each pipecat pipeline was freed. Written to DIR/<pid>.json every 2 s and as pipelines go,
once the process has imported pipecat (the emulators and the load generator never do):

- `collections`: per generation, how many collections, their total and longest pause (ms, wall clock), start-up's
  included;
- `pipelines`: how many `PipelineWorker`s were made (one per call in the server), and how many of their pipelines
  were freed by reference counting (`by_refcount`: the call's objects held no cycle when the last reference went)
  or by the cyclic collector (`by_collector`); the rest were still alive at the last write.

For `runtime/call_teardown.py`: `GC_WATCH_OUT=/tmp/gw PYTHONPATH=$PWD/bench/gc_watch .venv/bin/python bench/load.py
--target voxline --soak 300 --soak-lanes 4 --no-plots --out /tmp/soak`, then read the file whose `argv` has `serve`.
"""

import os

if os.environ.get("GC_WATCH_OUT"):
    import gc
    import json
    import sys
    import threading
    import time
    import weakref

    _out = os.path.join(os.environ["GC_WATCH_OUT"], f"{os.getpid()}.json")
    os.makedirs(os.environ["GC_WATCH_OUT"], exist_ok=True)
    _collections = {g: {"n": 0, "total_ms": 0.0, "max_ms": 0.0} for g in (0, 1, 2)}
    _pipelines = {"made": 0, "by_refcount": 0, "by_collector": 0}
    _collecting = [False, 0.0]
    _lock = threading.Lock()

    def _on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            _collecting[:] = [True, time.perf_counter()]
            return
        ms = (time.perf_counter() - _collecting[1]) * 1000
        _collecting[0] = False
        c = _collections[info["generation"]]
        c["n"] += 1
        c["total_ms"] += ms
        c["max_ms"] = max(c["max_ms"], ms)

    def _write() -> None:
        with _lock:
            state = {"argv": sys.argv, "collections": _collections, "pipelines": _pipelines}
            tmp = _out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, _out)

    def _freed() -> None:
        _pipelines["by_collector" if _collecting[0] else "by_refcount"] += 1
        _write()

    def _watch() -> None:
        patched = False
        while True:
            module = sys.modules.get("pipecat.pipeline.worker")
            if not patched and module is not None and hasattr(module, "PipelineWorker"):
                init = module.PipelineWorker.__init__

                def counted(self, *args, **kwargs):
                    init(self, *args, **kwargs)
                    _pipelines["made"] += 1
                    weakref.finalize(self._pipeline, _freed).atexit = False  # still alive at exit: not freed

                module.PipelineWorker.__init__ = counted
                patched = True
            time.sleep(0.05 if not patched else 2.0)
            if patched:
                _write()

    gc.callbacks.append(_on_gc)
    threading.Thread(target=_watch, name="gc-watch", daemon=True).start()
