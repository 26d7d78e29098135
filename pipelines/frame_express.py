"""A data frame for an idle processor goes straight to its processing queue, not through its input task first.

pipecat 1.14 gives every processor two queues and two tasks: `queue_frame` puts each frame in the input queue, whose
task handles system frames at once and moves every other frame to the processing queue, whose task calls
`process_frame`. The first hop is what lets a system frame (an interruption) overtake data frames still waiting.
When the input queue is empty and its task is waiting on it, nothing waits to be overtaken: moving the frame is all
that task would do, one loop turn later. Under load a loop turn is the sum of every call's ready work, and a reply
crosses that hop at each processor between the end of the caller's turn and its first audio (the context into the
LLM, each token into the TTS): at 100 calls on two cores those two hops were ~25 ms of the reply's p95
(bench/HISTORY.md, session 25). Here `queue_frame` moves such a frame itself, in the pusher's task, when the input
task would move it next and do nothing else: it is idle (waiting on an empty queue), not paused, and the frame is not
a system frame. Every other frame takes pipecat's road, so frames keep their order, a system frame still overtakes
data frames queued before it, and pausing and an interruption's reset of the processing queue are unchanged. The one
difference is timing, as if the input task had run at once: a data frame pushed just before a system frame is
already in the processing queue when the system frame comes, which in pipecat depends on whether the input task got
a loop turn in between.

Tied to pipecat 1.14's `FrameProcessor.queue_frame` and `__input_frame_task_handler`, copied statement for statement
with the idle mark and the shortcut added and rebound on the class by `install()` (pipelines/call_pipeline.py);
`tests/test_frame_express.py` pins both copies to pipecat's source.
"""

from __future__ import annotations

from loguru import logger
from pipecat.frames.frames import StartFrame, SystemFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

PIPECATS: dict[str, object] = {}  # pipecat's own methods, once installed


async def queue_frame(self, frame, direction=FrameDirection.DOWNSTREAM, callback=None):
    # If we are cancelling we don't want to process any other frame.
    if self._cancelling:
        return

    if self._enable_direct_mode:
        if isinstance(frame, StartFrame):
            await self._FrameProcessor__setup_done.wait()
        await self._FrameProcessor__process_frame(frame, direction, callback)
        return

    if (self._voxline_input_idle and not isinstance(frame, SystemFrame) and self._FrameProcessor__input_queue.empty()
            and not self._FrameProcessor__should_block_system_frames):
        # What the idle input task would do with it next (a non-system frame: move it, nothing else).
        await self._FrameProcessor__process_queue.put((frame, direction, callback))
        return

    await self._FrameProcessor__input_queue.put((frame, direction, callback))

    # Nothing drains the queue until the StartFrame arrives and this
    # processor is set up, so a processor never acts on a frame before it
    # has been started. Frames pushed before that simply wait, and the
    # StartFrame is dequeued ahead of them.
    if isinstance(frame, StartFrame):
        self._FrameProcessor__start_received = True
        self._FrameProcessor__maybe_create_input_task()


async def input_frame_task_handler(self):
    while True:
        self._voxline_input_idle = True
        try:
            (frame, direction, callback) = await self._FrameProcessor__input_queue.get()
        finally:
            self._voxline_input_idle = False

        if self._FrameProcessor__should_block_system_frames and self._FrameProcessor__input_event:
            logger.trace(f"{self}: system frame processing paused")
            await self._FrameProcessor__input_event.wait()
            self._FrameProcessor__input_event.clear()
            self._FrameProcessor__should_block_system_frames = False
            logger.trace(f"{self}: system frame processing resumed")

        if isinstance(frame, SystemFrame):
            await self._FrameProcessor__process_frame(frame, direction, callback)
        elif self._FrameProcessor__process_queue:
            await self._FrameProcessor__process_queue.put((frame, direction, callback))
        else:
            raise RuntimeError(
                f"{self}: __process_queue is None when processing frame {frame.name}"
            )

        self._FrameProcessor__input_queue.task_done()


def install() -> None:
    if FrameProcessor.queue_frame is not queue_frame:
        PIPECATS["queue_frame"] = FrameProcessor.queue_frame
        PIPECATS["input_frame_task_handler"] = FrameProcessor._FrameProcessor__input_frame_task_handler
        FrameProcessor._voxline_input_idle = False  # True only while its input task waits on an empty queue
        FrameProcessor.queue_frame = queue_frame
        FrameProcessor._FrameProcessor__input_frame_task_handler = input_frame_task_handler
