"""Counts, in any Python process started with this directory first on PYTHONPATH (an absolute path) and
`GC_WATCH_OUT=DIR` set (not a VOXLINE_ name: the load benchmark keeps those from its servers), the garbage
collector's work and how each pipecat pipeline was freed. Written to DIR/<pid>.json every 2 s and as pipelines go,
once the process has imported pipecat (the emulators and the load generator never do):

- `collections`: per generation, how many collections, their total and longest pause (ms, wall clock), start-up's
  included;
- `pipelines`: how many `PipelineWorker`s were made (one per call in the server), and how many of their pipelines
  were freed by reference counting (`by_refcount`: the call's objects held no cycle when the last reference went)
  or by the cyclic collector (`by_collector`); the rest were still alive at the last write.

With `GC_WATCH_GARBAGE=1` as well, each write first runs a full collection that keeps what it finds
(`gc.DEBUG_SAVEALL`), records it, and then frees it:

- `garbage`: how many objects of each type were found unreachable, all writes together (a function, coroutine or
  method by its qualified name, a frame by its code and line);
- `cycles`: the reference cycles that held them, each by its objects' types: the strongly connected parts of what
  was found that nothing else found refers to (what else was found hangs off these). Breaking these frees the rest.

That mode adds a collection every 2 s, so its pauses are not the process's own. Objects made before start-up's
`gc.freeze()` are never looked at.

For `runtime/call_teardown.py`: `GC_WATCH_OUT=/tmp/gw PYTHONPATH=$PWD/bench/gc_watch .venv/bin/python bench/load.py
--target voxline --soak 300 --soak-lanes 4 --no-plots --out /tmp/soak`, then read the file whose `argv` has `serve`.
"""

import os

if os.environ.get("GC_WATCH_OUT"):
    import collections
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
    _lock = threading.RLock()  # a pipeline freed by the collection in _write writes too
    _writes = [0]
    _garbage_mode = os.environ.get("GC_WATCH_GARBAGE") == "1"
    _garbage: collections.Counter = collections.Counter()
    _cycles: collections.Counter = collections.Counter()

    def _kind(obj: object) -> str:
        t = type(obj)
        name = f"{t.__module__}.{t.__qualname__}"
        if t.__name__ == "frame":
            return f"{name}:{obj.f_code.co_qualname}:{obj.f_lineno}"
        if t.__name__ in ("function", "coroutine", "method"):
            return f"{name}:{getattr(obj, '__qualname__', '?')}"
        return name

    def _root_cycles(found: list) -> list[collections.Counter]:
        """Tarjan's strongly connected components of `found` (iteratively), keeping those no other one refers to."""
        index_of = {id(o): i for i, o in enumerate(found)}
        edges = [[index_of[id(r)] for r in gc.get_referents(o) if id(r) in index_of] for o in found]
        n = len(found)
        index, low, on_stack, comp = [-1] * n, [0] * n, [False] * n, [-1] * n
        stack: list[int] = []
        counter = n_comps = 0
        for start in range(n):
            if index[start] != -1:
                continue
            work = [(start, 0)]
            while work:
                v, at = work.pop()
                if at == 0:
                    index[v] = low[v] = counter
                    counter += 1
                    stack.append(v)
                    on_stack[v] = True
                for k in range(at, len(edges[v])):
                    w = edges[v][k]
                    if index[w] == -1:
                        work += [(v, k + 1), (w, 0)]
                        break
                    if on_stack[w]:
                        low[v] = min(low[v], index[w])
                else:
                    if low[v] == index[v]:
                        while True:
                            w = stack.pop()
                            on_stack[w] = False
                            comp[w] = n_comps
                            if w == v:
                                break
                        n_comps += 1
                    if work:
                        parent = work[-1][0]
                        low[parent] = min(low[parent], low[v])
        referred = {comp[w] for v in range(n) for w in edges[v] if comp[v] != comp[w]}
        members = collections.defaultdict(collections.Counter)
        for v in range(n):
            if comp[v] not in referred:
                members[comp[v]][_kind(found[v])] += 1
        return list(members.values())

    def _collect_garbage() -> None:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            found = list(gc.garbage)
            gc.garbage.clear()
        finally:
            gc.set_debug(0)
        _garbage.update(_kind(o) for o in found)
        for cycle in _root_cycles(found):
            _cycles[" | ".join(f"{n} {k}" for k, n in cycle.most_common())] += 1
        del found
        gc.collect()  # now freed

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

    def _write(look_for_garbage: bool = False) -> None:
        with _lock:
            if look_for_garbage:
                _collect_garbage()
            _writes[0] += 1
            state = {"argv": sys.argv, "writes": _writes[0], "collections": _collections, "pipelines": _pipelines}
            if _garbage_mode:
                state |= {"garbage": dict(_garbage), "cycles": dict(_cycles)}
            tmp = _out + ".tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps(state))  # json.dump's pure-Python encoder leaves a cycle of closures each time
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
                _write(look_for_garbage=_garbage_mode)

    gc.callbacks.append(_on_gc)
    threading.Thread(target=_watch, name="gc-watch", daemon=True).start()
