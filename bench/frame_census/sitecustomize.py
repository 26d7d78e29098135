"""Counts the frames pipecat's processors take in, by frame type and direction, in any Python process started with
this directory first on PYTHONPATH (an absolute path) and `FRAME_CENSUS_OUT=DIR` set (not a VOXLINE_ name: the load
benchmark keeps those from its servers). Every `FrameProcessor.queue_frame` that reaches pipecat is one frame hop:
a queue put, a wake-up of the processor's input task, and, for the push that brought it, a hand-off to the call's
observers. A frame a processor drops before pipecat queues it (voxline's trims) is not counted. Written to
DIR/<pid>.txt every 2 s and at exit: one line per kind, "count DO|UP FrameType", most first.

    FRAME_CENSUS_OUT=/tmp/census PYTHONPATH=$PWD/bench/frame_census \\
        .venv/bin/python bench/load.py --target voxline --calls 4 --turns 1 --hold 2 --no-plots --out /tmp/census/out

For the code of another revision, put its checkout first: PYTHONPATH=/tmp/wt-old:$PWD/bench/frame_census.
"""

import os

if os.environ.get("FRAME_CENSUS_OUT"):
    import atexit
    import collections
    import threading
    import time

    _out = os.environ["FRAME_CENSUS_OUT"]
    _counts: collections.Counter = collections.Counter()
    _lock = threading.Lock()

    def _dump() -> None:
        with _lock:
            if not _counts:
                return
            os.makedirs(_out, exist_ok=True)
            lines = [f"{n:8d} {direction} {kind}\n" for (kind, direction), n in _counts.most_common()]
            with open(os.path.join(_out, f"{os.getpid()}.txt"), "w") as f:
                f.writelines(lines)

    def _every_2s() -> None:
        while True:
            time.sleep(2)
            _dump()

    def _install() -> bool:
        try:
            from pipecat.processors import frame_processor
        except ImportError:
            return False
        pipecats = frame_processor.FrameProcessor.queue_frame
        downstream = frame_processor.FrameDirection.DOWNSTREAM

        async def queue_frame(self, frame, direction=downstream, callback=None):
            _counts[(type(frame).__name__, "DO" if direction is downstream else "UP")] += 1
            return await pipecats(self, frame, direction, callback)

        frame_processor.FrameProcessor.queue_frame = queue_frame
        _count_after_express(frame_processor.FrameProcessor, pipecats, downstream)
        return True

    def _count_after_express(processor_class, pipecats, downstream) -> None:
        """voxline's pipelines/frame_express.py replaces `queue_frame` with its own copy of pipecat's at start-up,
        which would take every frame past the counter: its `install` is wrapped to put the counter back in front,
        and pipecat's own method (its copy's slow road) behind it uncounted. Importable here: the benchmark puts
        the checkout on PYTHONPATH after this directory."""
        try:
            from pipelines import frame_express
        except ImportError:
            return
        install = frame_express.install

        def counted_install():
            install()
            frame_express.PIPECATS["queue_frame"] = pipecats
            express = processor_class.queue_frame

            async def queue_frame(self, frame, direction=downstream, callback=None):
                _counts[(type(frame).__name__, "DO" if direction is downstream else "UP")] += 1
                return await express(self, frame, direction, callback)

            processor_class.queue_frame = queue_frame

        frame_express.install = counted_install

    if _install():
        atexit.register(_dump)
        threading.Thread(target=_every_2s, daemon=True, name="frame-census").start()
