"""The heard-text gate in a real pipecat pipeline: text the carrier never confirms is released after the mark
timeout, and a call cancelled with text still held leaves no timer to fire into the finished pipeline."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import TTSTextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner

from pipelines.turns.heard import HeardTextGate


class _SilentCarrier:
    """A carrier that takes marks and never echoes them (a client that is not Twilio, or a line gone dead)."""

    holding = False

    def __init__(self):
        self.marks: list[str] = []

    def on_mark(self, listener) -> None:
        pass

    async def mark(self, name: str) -> None:
        self.marks.append(name)


class _Collect(FrameProcessor):
    def __init__(self):
        super().__init__()
        self.texts: list[str] = []

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSTextFrame):
            self.texts.append(frame.text)
        await self.push_frame(frame, direction)


async def _running(gate: HeardTextGate) -> tuple[PipelineWorker, _Collect, asyncio.Task]:
    collect = _Collect()
    worker = PipelineWorker(Pipeline([gate, collect]), cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker, _frame):
        started.set()

    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 10)
    return worker, collect, task


async def test_text_the_carrier_never_confirms_counts_as_heard_after_the_timeout(logged):
    carrier = _SilentCarrier()
    worker, collect, task = await _running(HeardTextGate(carrier, mark_timeout=0.2))
    try:
        await worker.queue_frame(TTSTextFrame("Hello there.", text_type="sentence"))
        await asyncio.sleep(0.1)
        assert carrier.marks == ["vx1"] and collect.texts == []  # held behind its mark
        await asyncio.sleep(0.3)
        assert collect.texts == ["Hello there."]
        assert sum("did not echo a mark" in line for line in logged) == 1
    finally:
        await worker.cancel()
        await asyncio.wait_for(task, 10)


async def test_a_call_cancelled_with_text_held_leaves_no_timer_behind(logged):
    carrier = _SilentCarrier()
    gate = HeardTextGate(carrier, mark_timeout=0.2)
    worker, collect, task = await _running(gate)
    await worker.queue_frame(TTSTextFrame("Goodbye.", text_type="sentence"))
    await asyncio.sleep(0.1)
    assert carrier.marks == ["vx1"] and collect.texts == []
    await worker.cancel()  # the caller hung up before the carrier echoed the mark
    await asyncio.wait_for(task, 10)
    await asyncio.sleep(0.35)  # past the mark timeout
    assert collect.texts == []
    assert not [line for line in logged if "did not echo a mark" in line or "heard-flush" in line], logged
