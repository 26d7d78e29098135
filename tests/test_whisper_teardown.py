"""The local Whisper STT leaves no task behind when a call ends, however early it ends."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import StartFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner

from pipelines.providers.whisper import LocalWhisperSTTService


class _SlowStart(FrameProcessor):
    """Holds the StartFrame, as a processor still starting does, so the pipeline has not started yet."""

    def __init__(self, release: asyncio.Event):
        super().__init__()
        self._release = release

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self._release.wait()
        await self.push_frame(frame, direction)


async def test_a_call_cancelled_while_its_pipeline_starts_leaves_no_whisper_task(logged):
    # What a caller who hangs up at once does to a call: the STT has had its StartFrame (and started its segment
    # task) but the pipeline has not started, so pipecat pushes no CancelFrame and only cleans the processors up.
    stt = LocalWhisperSTTService()
    worker = PipelineWorker(Pipeline([stt, _SlowStart(asyncio.Event())]),
                            params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000))
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    for _ in range(500):
        if stt._segment_task is not None:
            break
        await asyncio.sleep(0.01)
    segment_task = stt._segment_task
    assert segment_task is not None, "the STT never started"
    await worker.cancel(reason="the caller hung up")
    await asyncio.wait_for(running, 15)
    assert not [line for line in logged if "dangling tasks" in line], logged
    assert segment_task.done()
