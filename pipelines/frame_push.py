"""pipecat's push from one processor to the next, without building its trace line when nothing prints it.

pipecat 1.14's `FrameProcessor.__internal_push_frame`, which every `push_frame` goes through, starts each push with
`logger.trace(f"Pushing {frame} downstream from {self} to {self._next}")`. The f-string is built before loguru can
see that no sink takes TRACE: the frame's `__str__` (an audio frame formats its timestamp and six fields) and both
processors' names, ~2.3 µs a push alone and ~3 % of the server's busy time on noisy idle lines, where every 40 ms
frame of every call is pushed twice (a py-spy `--gil` profile of 20 calls). Here the push is pipecat's, statement
for statement, and the trace line is built and logged only while the server logs at TRACE (`trace_pushes`, which
`runtime.logs.configure_logging` calls). Tied to pipecat 1.14's private method, rebound on the class by `install()`
(pipelines/call_pipeline.py, which every architecture imports); `tests/test_frame_push.py` pins its source.
pipecat is imported by `install()`, not here, so configuring the log of a command that never builds a pipeline
does not import it.
"""

from __future__ import annotations

from loguru import logger

_trace = False
PIPECATS = None  # pipecat's own method, once installed


def trace_pushes(on: bool) -> None:
    """Log pipecat's "Pushing ..." line at every push (only worth its cost when a sink takes TRACE)."""
    global _trace
    _trace = on


async def _internal_push_frame(self, frame, direction):
    observer = self._setup.observer if self._setup else None
    try:
        timestamp = self.get_clock().get_time() if self._setup else 0
        if direction == FrameDirection.DOWNSTREAM and self._next:
            if _trace:
                logger.trace(f"Pushing {frame} downstream from {self} to {self._next}")

            if observer:
                data = FramePushed(
                    source=self,
                    destination=self._next,
                    frame=frame,
                    direction=direction,
                    timestamp=timestamp,
                )
                await observer.on_push_frame(data)
            await self._next.queue_frame(frame, direction)
        elif direction == FrameDirection.UPSTREAM and self._prev:
            if _trace:
                logger.trace(f"Pushing {frame} upstream from {self} to {self._prev}")
            if observer:
                data = FramePushed(
                    source=self,
                    destination=self._prev,
                    frame=frame,
                    direction=direction,
                    timestamp=timestamp,
                )
                await observer.on_push_frame(data)
            await self._prev.queue_frame(frame, direction)
    except Exception as e:  # noqa: BLE001 (pipecat's own: a push never raises into its caller)
        # Observers and the downstream processor run inside this
        # block, so the cause of an unexpected failure can't be attributed.
        await self.push_error(
            error_msg=f"Uncaught exception: {e}",
            exception=e,
            category=ErrorCategory.UNKNOWN,
        )


def install() -> None:
    global PIPECATS, FrameDirection, FramePushed, ErrorCategory
    from pipecat.observers.base_observer import FramePushed
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.utils.errors import ErrorCategory

    if FrameProcessor._FrameProcessor__internal_push_frame is not _internal_push_frame:
        PIPECATS = FrameProcessor._FrameProcessor__internal_push_frame
        FrameProcessor._FrameProcessor__internal_push_frame = _internal_push_frame
