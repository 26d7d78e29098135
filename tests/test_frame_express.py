"""A data frame for an idle processor skips the hop through its input task (pipelines/frame_express.py): it is in the
processing queue when `queue_frame` returns; a system frame, a frame for a busy or paused input task, takes
pipecat's road; the frames that arrive, and their order, are pipecat's. Real pipelines of pipecat processors, run by
pipecat's worker."""

from __future__ import annotations

import asyncio
import inspect

from pipecat.frames.frames import (
    EndFrame,
    InputAudioRawFrame,
    StartFrame,
    SystemFrame,
    TextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner

import pipelines.call_pipeline  # noqa: F401  (installs it, as every architecture's import does)
from pipelines import frame_express
from tests.pinned_source import statements


class _Hold(SystemFrame):
    """A system frame whose handling waits until the test lets it go."""


class _Through(FrameProcessor):
    def __init__(self, arrived: list[str] | None = None, release: asyncio.Event | None = None):
        super().__init__()
        self.arrived, self.release = arrived, release

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, _Hold) or (isinstance(frame, TextFrame) and frame.text == "slow"):
            await self.release.wait()
        if self.arrived is not None and isinstance(frame, TextFrame | _Hold | InputAudioRawFrame):
            self.arrived.append(frame.text if isinstance(frame, TextFrame) else type(frame).__name__)
        await self.push_frame(frame, direction)


async def _started(processors) -> tuple[PipelineWorker, asyncio.Task]:
    worker = PipelineWorker(Pipeline(processors), enable_rtvi=False, enable_turn_tracking=False)
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if all(p._FrameProcessor__process_frame_task is not None for p in processors):  # the StartFrame is through
            await asyncio.sleep(0.02)
            return worker, task
    raise AssertionError("the processors never started")


def _queued(processor) -> tuple[int, int]:
    return (processor._FrameProcessor__input_queue.qsize(), processor._FrameProcessor__process_queue.qsize())


async def _stop(worker, task) -> None:
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(task, 10)


async def test_a_data_frame_for_an_idle_processor_is_in_its_processing_queue_at_once():
    release = asyncio.Event()
    last = _Through(arrived=[], release=release)
    worker, task = await _started([_Through(), last])
    await last.queue_frame(TextFrame("slow"))  # keeps the processing task busy, so what follows stays visible
    await asyncio.sleep(0.05)
    assert last._voxline_input_idle
    await last.queue_frame(TextFrame("next"))
    assert _queued(last) == (0, 1)  # moved without a loop turn: the input task never held it
    await last.queue_frame(InputAudioRawFrame(audio=bytes(320), sample_rate=8000, num_channels=1))
    assert _queued(last) == (1, 1)  # a system frame takes the input queue, as in pipecat
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.sleep(0.05)
    assert last.arrived == ["InputAudioRawFrame", "slow", "next"]  # the system frame overtook the queued data
    await _stop(worker, task)


async def test_data_behind_a_system_frame_in_hand_waits_for_it_as_in_pipecat():
    release = asyncio.Event()
    last = _Through(arrived=[], release=release)
    worker, task = await _started([_Through(), last])
    await last.queue_frame(_Hold())
    await asyncio.sleep(0.05)  # the input task is handling it, and waits
    assert not last._voxline_input_idle
    await last.queue_frame(TextFrame("after"))
    assert _queued(last) == (1, 0)  # not past the system frame being handled
    release.set()
    await asyncio.sleep(0.05)
    assert last.arrived == ["_Hold", "after"]
    await _stop(worker, task)


async def test_paused_system_frames_hold_data_frames_back_too():
    last = _Through(arrived=[])
    worker, task = await _started([_Through(), last])
    await last.pause_processing_system_frames()
    await last.queue_frame(TextFrame("held"))
    assert _queued(last) == (1, 0)
    await last.resume_processing_system_frames()
    await asyncio.sleep(0.05)
    assert last.arrived == ["held"]
    await _stop(worker, task)


async def _arrivals(frames) -> list[str]:
    arrived: list[str] = []
    processors = [_Through(), _Through(), _Through(arrived=arrived)]
    worker, task = await _started(processors)
    for frame in frames:
        await worker.queue_frame(frame)
        await asyncio.sleep(0)
    await _stop(worker, task)
    return arrived


async def test_what_arrives_and_its_order_are_pipecats():
    def frames():
        return [item for i in range(30) for item in
                (TextFrame(f"t{i}"), InputAudioRawFrame(audio=bytes(320), sample_rate=8000, num_channels=1))]

    ours = await _arrivals(frames())
    original = FrameProcessor.queue_frame, FrameProcessor._FrameProcessor__input_frame_task_handler
    FrameProcessor.queue_frame = frame_express.PIPECATS["queue_frame"]
    FrameProcessor._FrameProcessor__input_frame_task_handler = frame_express.PIPECATS["input_frame_task_handler"]
    try:
        pipecats = await _arrivals(frames())
    finally:
        FrameProcessor.queue_frame, FrameProcessor._FrameProcessor__input_frame_task_handler = original
    texts = [a for a in ours if a.startswith("t")]
    assert texts == [f"t{i}" for i in range(30)] and ours.count("InputAudioRawFrame") == 30
    assert [a for a in pipecats if a.startswith("t")] == texts and pipecats.count("InputAudioRawFrame") == 30


def test_the_copies_are_pipecats_statement_for_statement():
    """If pipecat 1.14's methods changed, these copies would be stale: the test says so."""
    assert FrameProcessor.queue_frame is frame_express.queue_frame
    express = ("_voxline_input_idle and not isinstance(frame, SystemFrame)",
               "and not self._FrameProcessor__should_block_system_frames):", "# What the idle input task would do")
    ours = statements(frame_express.queue_frame, dropped=express)
    # The shortcut's body: the move and its return, right before pipecat's put into the input queue.
    i = ours.index("    await self.__input_queue.put((frame, direction, callback))")
    assert ours[i - 2:i] == ["        await self.__process_queue.put((frame, direction, callback))", "        return"]
    assert ours[:i - 2] + ours[i:] == statements(frame_express.PIPECATS["queue_frame"])
    # The idle mark wraps the queue's get in a try block of its own, hence the lines compared unindented.
    idle = ("_voxline_input_idle", "try:", "finally:")
    assert (statements(frame_express.input_frame_task_handler, dropped=idle, indented=False)
            == statements(frame_express.PIPECATS["input_frame_task_handler"], indented=False))
    assert frame_express.PIPECATS["input_frame_task_handler"].__name__ == "__input_frame_task_handler"
    assert "self.__input_frame_task_handler()" in inspect.getsource(FrameProcessor._FrameProcessor__create_input_task)
    assert isinstance(StartFrame(), SystemFrame)  # the StartFrame never takes the shortcut
