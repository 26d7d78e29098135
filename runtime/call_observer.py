"""The per-call proxy between pipecat's processors and the call's observers, without the hand-offs nobody reads.

pipecat's `WorkerObserver` puts every frame push, and every frame a processor processes, into each observer's
queue, and each put wakes that observer's task. A caller's 40 ms audio frame crosses three or four processors
before the user aggregator drops it, so with the call's two observers (the latency observer, pipecat's idle
watch) that was about a dozen queue puts and task wake-ups per frame, 25 times a second per call, for events no
observer here looks at: neither reads a caller's audio frame, and none overrides `on_process_frame`.

This proxy hands on the same events as pipecat's, except:
- no push of a caller's audio frame (`InputAudioRawFrame`): a call's observers must not need them. The latency
  observer works from VAD, transcript, LLM, TTS and metrics frames, the idle watch from speaking frames;
- no processed-frame events unless some observer overrides `on_process_frame`.

And the call's own observers are told at once, in the pushing task, instead of through a queue and a task each.
pipecat queues every event for every observer so that a slow one cannot hold the pipeline up; a call's two
(the latency observer, which keeps a few timestamps and hands metrics on, and pipecat's idle watch, which sets an
event) do a few microseconds of work, against a queue put, a task wake-up and a queue get for each of them, for
every frame pushed in the call (~4 % of the server's event loop at 40 talking calls, in a py-spy profile). They
are told in the same order, of the same pushes (a frame's first push only, for these two), and an error in one
is logged and does not reach the pipeline. Any other observer still gets pipecat's queue and task.

Installed over the worker's own proxy before the worker starts (`install`); tied to pipecat's private
`PipelineWorker._observer`, `WorkerObserver._observers`, `_proxies`, `_create_proxies`, `_send_to_proxy` and
`_frames_pushed` (its first-push bookkeeping, repeated here), pinned like the other seams.

Some frames are read only by observers, and an observer here sees a frame at its first push only
(`observe_every_push=False`: the latency observer, which also hands usage to the call's record, and the idle
watch): the metrics frames (TTFB, processing time, usage), and the speaking heartbeats (`BotSpeakingFrame`,
`UserSpeakingFrame`), whose only reader is the idle watch. pipecat still carries each through every later
processor, a queue hop each: the metrics to the pipeline's end, the heartbeats both ways through the whole call.
`stop_observed_only_frames` has each processor of the call take such a frame in and drop it, so it is observed
as it leaves the processor that made it, and goes no further.
"""

from __future__ import annotations

from loguru import logger
from pipecat.frames.frames import BotSpeakingFrame, InputAudioRawFrame, MetricsFrame, UserSpeakingFrame
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed, ProcessorSetUp
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import IdleFrameObserver, PipelineWorker
from pipecat.pipeline.worker_observer import WorkerObserver, _PipelineStartedSignal
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

UNOBSERVED = (InputAudioRawFrame,)
OBSERVED_ONLY = (MetricsFrame, BotSpeakingFrame, UserSpeakingFrame)


def told_inline(observer: BaseObserver) -> bool:
    """An observer whose every event is a few microseconds of work that never waits: pipecat's idle watch, and
    any whose class says so (`told_inline = True`: the call's latency observer, runtime/turn_metrics.py)."""
    return type(observer) is IdleFrameObserver or getattr(type(observer), "told_inline", False) is True


class CallWorkerObserver(WorkerObserver):
    def __init__(self, *, observers: list[BaseObserver] | None = None, **kwargs):
        super().__init__(observers=observers, **kwargs)
        self._processed_wanted = self._wants_processed()
        # Decided once, for the observers the worker was made with; one added later gets a queue and a task.
        self._inline: list[BaseObserver] = [o for o in self._observers if told_inline(o)]

    def _create_proxies(self, observers: list[BaseObserver]) -> dict:
        return {o: self._create_proxy(o) for o in observers if not any(o is i for i in self._inline)}

    async def setup(self, task_manager):
        await super().setup(task_manager)
        for observer in self._inline:
            await observer.setup(task_manager)

    async def cleanup(self):
        await super().cleanup()
        for observer in self._inline:
            try:
                await observer.cleanup()
            except Exception as e:
                logger.error(f"Error cleaning up {observer}: {e}")

    def _wants_processed(self) -> bool:
        return any(type(o).on_process_frame is not BaseObserver.on_process_frame for o in self._observers)

    def add_observer(self, observer: BaseObserver):
        super().add_observer(observer)
        self._processed_wanted = self._wants_processed()

    async def remove_observer(self, observer: BaseObserver):
        if any(observer is i for i in self._inline):
            self._inline = [i for i in self._inline if i is not observer]
            await observer.cleanup()
        await super().remove_observer(observer)
        self._processed_wanted = self._wants_processed()

    async def on_process_frame(self, data: FrameProcessed):
        if self._processed_wanted:
            await super().on_process_frame(data)

    async def on_push_frame(self, data: FramePushed):
        frame = data.frame
        if isinstance(frame, UNOBSERVED) or self._proxies is None:
            return
        # pipecat's bookkeeping (WorkerObserver.on_push_frame), done here because it is skipped without proxies
        data.first_push = frame.id not in self._frames_pushed
        if data.first_push:
            self._frames_pushed[frame.id] = frame
        for observer in self._inline:
            if data.first_push or observer.observe_every_push:
                await _tell(observer, observer.on_push_frame, data)
        for proxy in self._proxies.values():
            if data.first_push or proxy.observer.observe_every_push:
                await proxy.queue.put(data)

    async def _send_to_proxy(self, data):
        for observer in self._inline:
            if isinstance(data, _PipelineStartedSignal):
                await _tell(observer, observer.on_pipeline_started)
            elif isinstance(data, FrameProcessed):
                await _tell(observer, observer.on_process_frame, data)
            elif isinstance(data, ProcessorSetUp):
                await _tell(observer, observer.on_processor_setup, data)
        await super()._send_to_proxy(data)


async def _tell(observer: BaseObserver, handler, *args) -> None:
    try:
        await handler(*args)
    except Exception:
        # In pipecat's queue an observer's error ends its task, not the pipeline; here it must not reach the
        # processor that pushed the frame.
        logger.exception(f"observer {observer} failed")


def install(worker: PipelineWorker) -> CallWorkerObserver:
    """Before the worker runs: its processors are handed the proxy when they are set up."""
    proxy = CallWorkerObserver(observers=worker._observer._observers)
    worker._observer = proxy
    return proxy


def stop_observed_only_frames(pipeline: Pipeline) -> None:
    """Before the pipeline starts: every processor of it (its own source and sink too) drops the `OBSERVED_ONLY`
    frames pushed to it. The pusher's observers have been told by then (pipecat notifies them before queueing).
    The user aggregator's own copy of its heartbeat (queued to itself, not pushed) is dropped too; the copy it
    pushes upstream is the one observed."""
    for processor in pipeline.processors:
        _drop_observed_only(processor)


def _drop_observed_only(processor: FrameProcessor) -> None:
    queue_frame = processor.queue_frame

    async def queue_unless_observed_only(frame, direction: FrameDirection = FrameDirection.DOWNSTREAM,
                                         callback=None):
        if isinstance(frame, OBSERVED_ONLY):
            return
        await queue_frame(frame, direction, callback)

    processor.queue_frame = queue_unless_observed_only
