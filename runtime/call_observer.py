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

Installed over the worker's own proxy before the worker starts (`install`); tied to pipecat's private
`PipelineWorker._observer` and `WorkerObserver._observers`, pinned like the other seams.

Some frames are read only by observers, and an observer here sees a frame at its first push only
(`observe_every_push=False`: the latency observer, which also hands usage to the call's record, and the idle
watch): the metrics frames (TTFB, processing time, usage), and the speaking heartbeats (`BotSpeakingFrame`,
`UserSpeakingFrame`), whose only reader is the idle watch. pipecat still carries each through every later
processor, a queue hop each: the metrics to the pipeline's end, the heartbeats both ways through the whole call.
`stop_observed_only_frames` has each processor of the call take such a frame in and drop it, so it is observed
as it leaves the processor that made it, and goes no further.
"""

from __future__ import annotations

from pipecat.frames.frames import BotSpeakingFrame, InputAudioRawFrame, MetricsFrame, UserSpeakingFrame
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.pipeline.worker_observer import WorkerObserver
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

UNOBSERVED = (InputAudioRawFrame,)
OBSERVED_ONLY = (MetricsFrame, BotSpeakingFrame, UserSpeakingFrame)


class CallWorkerObserver(WorkerObserver):
    def __init__(self, *, observers: list[BaseObserver] | None = None, **kwargs):
        super().__init__(observers=observers, **kwargs)
        self._processed_wanted = self._wants_processed()

    def _wants_processed(self) -> bool:
        return any(type(o).on_process_frame is not BaseObserver.on_process_frame for o in self._observers)

    def add_observer(self, observer: BaseObserver):
        super().add_observer(observer)
        self._processed_wanted = self._wants_processed()

    async def remove_observer(self, observer: BaseObserver):
        await super().remove_observer(observer)
        self._processed_wanted = self._wants_processed()

    async def on_process_frame(self, data: FrameProcessed):
        if self._processed_wanted:
            await super().on_process_frame(data)

    async def on_push_frame(self, data: FramePushed):
        if not isinstance(data.frame, UNOBSERVED):
            await super().on_push_frame(data)


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
