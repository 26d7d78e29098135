"""Running processors in a real pipecat pipeline for a test: a carrier that never echoes marks, a collecting end,
and a running worker."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import TTSTextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner

from runtime import call_observer


class SilentCarrier:
    """A carrier that takes marks and never echoes them (a client that is not Twilio, or a line gone dead); it holds
    the mark listener, as the serializer does."""

    holding = False

    def __init__(self):
        self.marks: list[str] = []
        self.listener = None

    def on_mark(self, listener) -> None:
        self.listener = listener

    async def mark(self, name: str) -> None:
        self.marks.append(name)


class Collect(FrameProcessor):
    """The pipeline's end: counts the frames that reach it and keeps the agent's text."""

    def __init__(self):
        super().__init__()
        self.frames = 0
        self.texts: list[str] = []

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        self.frames += 1
        if isinstance(frame, TTSTextFrame):
            self.texts.append(frame.text)
        await self.push_frame(frame, direction)


async def running(*processors: FrameProcessor) -> tuple[PipelineWorker, Collect, asyncio.Task]:
    """`processors` then a `Collect`, in a worker behind voxline's observer proxy, started; the task runs it."""
    collect = Collect()
    worker = PipelineWorker(Pipeline([*processors, collect]), enable_rtvi=False, enable_turn_tracking=False,
                            cancel_on_idle_timeout=False)
    call_observer.install(worker)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker, _frame):
        started.set()  # a handler closing over the test's objects, as the session's close over the call's

    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 10)
    return worker, collect, task
