"""pipecat's push between processors, without its trace line built for no one (pipelines/frame_push.py): the
frames, their order and what observers are told are pipecat's; the "Pushing ..." line is built and logged only
while the log takes TRACE; an error past the push is pipecat's error frame. Real pipelines of pipecat processors,
run by pipecat's worker."""

from __future__ import annotations

import asyncio
import inspect

from loguru import logger
from pipecat.frames.frames import EndFrame, ErrorFrame, InputAudioRawFrame, TextFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

import pipelines.call_pipeline  # noqa: F401  (installs the push, as every architecture's import does)
from pipelines import frame_push
from runtime.logs import configure_logging
from tests.pinned_source import statements


class _Counted(InputAudioRawFrame):
    """A caller's audio frame that counts how often it is made into text (a trace line does that)."""

    described = 0

    def __str__(self):
        type(self).described += 1
        return super().__str__()


class _Through(FrameProcessor):
    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class _Upstream(_Through):
    """Sends an error upstream for every text frame, as a failing service does."""

    async def process_frame(self, frame, direction):
        if isinstance(frame, TextFrame):
            await self.push_frame(ErrorFrame("upstream"), FrameDirection.UPSTREAM)
        await super().process_frame(frame, direction)


class _Seen(BaseObserver):
    def __init__(self):
        super().__init__(observe_every_push=True)
        self.pushed: list[tuple[str, str, str, str]] = []

    async def on_push_frame(self, data: FramePushed):
        self.pushed.append((type(data.frame).__name__, data.source.name.split("#")[0],
                            data.destination.name.split("#")[0], data.direction.name))


async def _run(frames, *, last=None) -> tuple[list[str], list[tuple], list[str]]:
    """Frames through four processors; what reached the last one, what an observer saw, and the errors upstream."""
    arrived, errors = [], []

    class _Last(_Through):
        async def process_frame(self, frame, direction):
            arrived.append(type(frame).__name__)
            await super().process_frame(frame, direction)

    seen = _Seen()
    worker = PipelineWorker(Pipeline([_Through(), _Upstream(), _Through(), last or _Last()]), observers=[seen],
                            enable_rtvi=False, enable_turn_tracking=False)

    @worker.event_handler("on_pipeline_error")
    async def on_error(_, frame):
        errors.append(frame.error)

    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    await worker.queue_frames(frames)
    await asyncio.wait_for(runner.run(), 10)
    return arrived, seen.pushed, errors


def _frames():
    return [_Counted(audio=bytes(640), sample_rate=8000, num_channels=1), TextFrame("hello"),
            _Counted(audio=bytes(640), sample_rate=8000, num_channels=1), TextFrame("again"), EndFrame()]


async def _with_pipecats_push(frames):
    ours = FrameProcessor._FrameProcessor__internal_push_frame
    FrameProcessor._FrameProcessor__internal_push_frame = frame_push.PIPECATS
    try:
        return await _run(frames)
    finally:
        FrameProcessor._FrameProcessor__internal_push_frame = ours


async def test_frames_and_observers_see_what_pipecats_push_gives_them():
    assert FrameProcessor._FrameProcessor__internal_push_frame is frame_push._internal_push_frame
    ours = await _run(_frames())
    pipecats = await _with_pipecats_push(_frames())
    assert ours == pipecats
    arrived, pushed, errors = ours
    assert arrived.count("_Counted") == 2 and arrived.count("TextFrame") == 2 and arrived[-1] == "EndFrame"
    assert ("ErrorFrame", "_Upstream", "_Through", "UPSTREAM") in pushed  # upstream pushes are observed too
    assert ("TextFrame", "_Through", "_Upstream", "DOWNSTREAM") in pushed
    assert errors == ["upstream", "upstream"]


async def test_the_trace_line_is_built_only_when_the_log_takes_trace():
    _Counted.described = 0
    await _run(_frames())
    assert _Counted.described == 0  # no line built: loguru would have dropped it

    lines: list[str] = []
    frame_push.trace_pushes(True)
    sink = logger.add(lambda message: lines.append(str(message)), level="TRACE", format="{message}",
                      filter=lambda record: record["message"].startswith("Pushing "))
    try:
        await _run(_frames())
    finally:
        logger.remove(sink)
        frame_push.trace_pushes(False)
    assert _Counted.described > 0
    assert any(line.startswith("Pushing _Counted#") and " downstream from _Through#" in line for line in lines)
    assert any(line.startswith("Pushing ErrorFrame#") and " upstream from _Upstream#" in line for line in lines)


def test_the_servers_log_level_decides():
    try:
        configure_logging("TRACE")
        assert frame_push._trace is True
        configure_logging("info")
        assert frame_push._trace is False
    finally:
        configure_logging("WARNING")


async def test_an_error_past_the_push_becomes_pipecats_error_frame():
    class _Broken(FrameProcessor):
        async def queue_frame(self, frame, direction=FrameDirection.DOWNSTREAM, callback=None):
            if isinstance(frame, TextFrame):
                raise RuntimeError("next processor broke")
            await super().queue_frame(frame, direction, callback)

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)

    _, _, errors = await _run(_frames(), last=_Broken())
    assert "Uncaught exception: next processor broke" in errors


def test_the_push_is_pipecats_statement_for_statement():
    """If pipecat 1.14's method changed, this copy would be stale: the test says so."""
    assert frame_push.PIPECATS is not None and frame_push.PIPECATS.__name__ == "__internal_push_frame"
    trace = ("logger.trace(", "if _trace:")
    assert (statements(frame_push._internal_push_frame, dropped=trace)
            == statements(frame_push.PIPECATS, dropped=trace))
    assert "self.__internal_push_frame(frame, direction)" in inspect.getsource(FrameProcessor.push_frame)
