"""A call's own observers are told of each frame at once, in the pushing task, and are told what pipecat's queued
delivery tells them, in the same order; any other observer still gets pipecat's queue and task; an observer's
error does not reach the pipeline (runtime/call_observer.py). Real pipelines of pipecat processors, run by
pipecat's worker."""

from __future__ import annotations

import asyncio
import inspect

from pipecat.frames.frames import EndFrame, InputAudioRawFrame, MetricsFrame, TextFrame
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import IdleFrameObserver, PipelineWorker
from pipecat.pipeline.worker_observer import WorkerObserver
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner

from runtime import call_observer
from runtime.turn_metrics import TurnLatencyTracker


class _Through(FrameProcessor):
    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class _Measures(_Through):
    """A service reporting a metric as it hands a text frame on, as pipecat's services push their MetricsFrame."""

    async def process_frame(self, frame, direction):
        if isinstance(frame, TextFrame):
            await self.push_frame(MetricsFrame(data=[TTFBMetricsData(processor="llm", value=0.25)]))
        await super().process_frame(frame, direction)


class _Seen(BaseObserver):
    def __init__(self, every_push: bool = False):
        super().__init__(observe_every_push=every_push)
        self.pushed: list[tuple[str, str, bool]] = []
        self.task_names: set[str] = set()
        self.started = 0

    async def on_push_frame(self, data: FramePushed):
        self.pushed.append((type(data.frame).__name__, data.source.name, data.first_push))
        self.task_names.add(asyncio.current_task().get_name())

    async def on_pipeline_started(self):
        self.started += 1


class _SeenInline(_Seen):
    told_inline = True


class _Fails(_SeenInline):
    async def on_push_frame(self, data: FramePushed):
        await super().on_push_frame(data)
        raise RuntimeError("observer bug")


async def _run(*observers: BaseObserver, frames=None) -> tuple[PipelineWorker, list]:
    arrived = []

    class _Last(_Through):
        async def process_frame(self, frame, direction):
            arrived.append(type(frame).__name__)
            await super().process_frame(frame, direction)

    worker = PipelineWorker(Pipeline([_Through(), _Measures(), _Through(), _Last()]), observers=list(observers),
                            enable_rtvi=False, enable_turn_tracking=False)
    proxy = call_observer.install(worker)
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    await worker.queue_frames(frames or [InputAudioRawFrame(audio=bytes(640), sample_rate=8000, num_channels=1),
                                         TextFrame("hello"), TextFrame("again"), EndFrame()])
    await asyncio.wait_for(runner.run(), 10)
    await asyncio.sleep(0.05)  # a queued observer's task drains its queue
    return worker, arrived, proxy


async def test_the_calls_observers_are_told_inline_and_others_through_pipecats_queue():
    tracker = TurnLatencyTracker()
    inline, queued = _SeenInline(), _Seen()
    worker, _, proxy = await _run(tracker.observer, inline, queued)
    idle = [o for o in proxy._observers if type(o) is IdleFrameObserver]
    assert idle, "pipecat's worker adds its idle watch"
    told_inline = [o for o in proxy._observers if call_observer.told_inline(o)]
    assert set(map(id, told_inline)) == {id(tracker.observer), id(inline), id(idle[0])}
    # No queue and no task for them: only the other observer has pipecat's proxy.
    assert proxy._proxies is not None and list(proxy._proxies) == [queued]
    # Told in the tasks that pushed the frames (the processors'), not in an observer's task of its own.
    assert not any("_proxy_task_handler" in name for name in inline.task_names), inline.task_names
    assert any("_proxy_task_handler" in name for name in queued.task_names), queued.task_names
    assert inline.started == queued.started == 1


async def test_an_inline_observer_is_told_what_pipecats_queue_tells_and_in_the_same_order():
    for every_push in (False, True):
        inline, queued = _SeenInline(every_push), _Seen(every_push)
        await _run(inline, queued)
        assert inline.pushed == queued.pushed
        names = [name for name, _, _ in inline.pushed]
        # each of the two text frames at every push from processor to processor, or at its first push only
        assert names.count("TextFrame") > 4 if every_push else names.count("TextFrame") == 2, inline.pushed
        assert "InputAudioRawFrame" not in names and "MetricsFrame" in names
        assert [first for name, _, first in inline.pushed if name == "TextFrame"][0] is True


async def test_the_latency_observer_told_inline_still_hands_on_the_calls_metrics():
    metrics = []
    tracker = TurnLatencyTracker(on_metrics=metrics.append)
    await _run(tracker.observer)
    assert [(m.processor, m.value) for m in metrics if isinstance(m, TTFBMetricsData)] == [("llm", 0.25)] * 2


async def test_an_observers_error_is_logged_and_the_call_goes_on(logged):
    failing, other = _Fails(), _SeenInline()
    _, arrived, _ = await _run(failing, other)
    assert arrived.count("TextFrame") == 2 and "EndFrame" in arrived  # the pipeline carried everything through
    assert other.pushed == failing.pushed and len(other.pushed) > 4  # and the other observer was told of it all
    text = "\n".join(logged)
    assert "failed" in text and "RuntimeError: observer bug" in text, text[-2000:]


def test_pipecat_keeps_what_the_inline_delivery_repeats():
    # The first-push bookkeeping is repeated from WorkerObserver.on_push_frame, and proxies are made by
    # _create_proxies in setup and events other than pushes queued by _send_to_proxy: if pipecat changed these,
    # this fails rather than the calls' observers going quiet.
    push = inspect.getsource(WorkerObserver.on_push_frame)
    assert "frame.id not in self._frames_pushed" in push and "self._frames_pushed[frame.id] = frame" in push
    assert "self._create_proxies(self._observers)" in inspect.getsource(WorkerObserver.setup)
    for event in ("on_pipeline_started", "on_process_frame", "on_processor_setup"):
        assert "self._send_to_proxy(" in inspect.getsource(getattr(WorkerObserver, event)), event
