"""The caller's side of the context, and the end of the road for the caller's audio.

In pipecat 1.14 the user aggregator runs the VAD and the turn strategies (smart-turn included) on the caller's
audio, then pushes every audio frame on downstream, where nothing in a `pipeline` call uses it: the LLM, the TTS,
the output transport and the assistant aggregator each take and hand on 25 frames a second per call, with a
queue hop and an observer notification each time. Recording taps the audio in the serializer, before all this.

While the caller speaks, its VAD broadcasts a `UserSpeakingFrame` both ways every 0.2 s, through every processor of
the call (~170 µs of CPU each, as the output's bot-speaking heartbeat: `bench/bot_speaking.py`). Its only reader
in a call is pipecat's idle watch (300 s); the turn rules go by the VAD's started/stopped frames. Here it comes
once a second, as the bot's does (telephony/audio_out.py), and a call stops it at its first push
(`runtime/call_observer.py`). Tied to pipecat 1.14's `_vad_controller` and its
`_speech_activity_period`, pinned like the other seams.

The VAD's verdicts are handled before the caller's audio that came after the audio they were made from. pipecat
queues its VAD's started/stopped frame to the aggregator itself, behind every frame already waiting, and the caller's
audio frames are system frames of the same rank. Each audio frame waits for its VAD windows to be scored (a thread
round trip: up to ~10 ms on an idle server, 50-60 ms at p95 with 100 calls on two cores), so under load the
caller's frames pile up behind the one being scored (at 100 calls they reached the aggregator 170-450 ms late at
p95), and the verdict waited behind all of them, each costing its own round trip: a barge-in's hold waited 81 ms at
p95 and 279 ms at p99 for that pile (bench/HISTORY.md, session 26). Here a verdict goes into the queue just ahead
of the first audio frame waiting, where it would have been had that frame's predecessor been scored at once; frames
of any other kind that came before that audio frame stay ahead of it, as in pipecat. Tied to pipecat 1.14's
`_queued_broadcast_frame` and the `FrameProcessorQueue` heap of (tier, arrival count, item), pinned like the other
seams (tests/test_vad_verdict_order.py).

The caller's final transcripts are not dropped by an interruption. A turn that starts on an interim transcript (a
barge-in decided on the words so far, or pipecat's transcript rule) interrupts the agent, and pipecat's interruption
empties this aggregator's queue of every interruptible frame: under load the final for the same words was often
already waiting there, so the turn had no words and ended only on pipecat's 5 s watchdog, as an empty turn. At
100 calls that was 20-46 of 300 turns, at 5.5-6.5 s (bench/HISTORY.md, session 33; tests/test_interrupted_words.py).
An interruption is about the agent's output; what the caller said is never stale because of one.

The caller's words are also handled in the order they came among the caller's audio, not after all of it. pipecat's
input queue takes system frames (the caller's audio is one) before data frames (the transcripts are), whenever they
came. While the caller's audio waits for the VAD (above), the input task always has audio to take first, so a
transcript waited until the pile had drained, behind audio that came after it: at 100 calls on two cores the STT's
words reached the turn rules 2.5 s after the STT pushed them at p50 and 5-7 s at p99, and the turns they would have
started or ended waited as long (a caller who heard a second of silence asked again, and two questions became one
turn). Here a transcript, an interim or an empty final (`NothingMoreHeardFrame`) that finds the input task busy goes
into the queue at the audio's rank, in its arrival order, so it is handled after the audio that came before it and
before the audio that came after; the input task then hands it to the processing task, as it hands every data
frame. Only the caller's words are moved: every other frame keeps pipecat's order.
"""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMAssistantAggregator,
    LLMAssistantAggregatorParams,
    LLMUserAggregator,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection

from pipelines.stt_frames import NothingMoreHeardFrame

USER_SPEAKING_EVERY_SECS = 1.0  # pipecat's is 0.2; the bot's heartbeat is the same (telephony/audio_out.py)


_VERDICTS = (VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame)
_WORDS = (TranscriptionFrame, InterimTranscriptionFrame, NothingMoreHeardFrame)  # the STT's, about the caller's audio


class CallerUserAggregator(LLMUserAggregator):
    _verdicts_ahead = 0  # verdicts put ahead of waiting audio so far: keeps their keys apart and in order
    # The caller's audio frames queued here, and those done with (analyzed by the VAD, or dropped while the caller
    # is muted): how far behind the clock the VAD is, for the turn rules (pipelines/turns/heard_silence.py).
    audio_arrived = 0
    audio_settled = 0

    async def queue_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM,
                          callback=None):
        if isinstance(frame, InputAudioRawFrame) and not self._cancelling:
            self.audio_arrived += 1
        elif isinstance(frame, TranscriptionFrame):
            frame.interruptible = False  # the caller's words outlive the interruption that may come before them
        if (direction is FrameDirection.DOWNSTREAM and isinstance(frame, _WORDS)
                and self._queue_words_in_order(frame, callback)):
            return
        await super().queue_frame(frame, direction, callback)

    def _queue_words_in_order(self, frame: Frame, callback) -> bool:
        """Queues the caller's words at the rank of the caller's audio, in arrival order, while the input task is
        busy; False (nothing queued) where pipecat's `queue_frame` (with pipelines/frame_express.py) should take it:
        the task idle on an empty queue (the words then go straight to processing), or the processor in direct mode."""
        if self._cancelling:
            return True  # pipecat's queue_frame drops it too
        queue = self._FrameProcessor__input_queue
        if self._enable_direct_mode or (getattr(self, "_voxline_input_idle", False) and queue.empty()):
            return False
        queue._FrameProcessorQueue__counter += 1
        asyncio.PriorityQueue.put_nowait(
            queue, (queue.SYSTEM_PRIORITY, queue._FrameProcessorQueue__counter, (frame, FrameDirection.DOWNSTREAM,
                                                                               callback)))
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        try:
            await super().process_frame(frame, direction)
        finally:
            if isinstance(frame, InputAudioRawFrame):
                self.audio_settled += 1

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, (InputAudioRawFrame, NothingMoreHeardFrame)):
            return  # for the turn rules here; nothing downstream reads either
        await super().push_frame(frame, direction)

    async def _queued_broadcast_frame(self, frame_cls: type[Frame], **kwargs):
        if frame_cls in _VERDICTS and self._queue_ahead_of_audio(frame_cls(**kwargs)):
            await self.push_frame(frame_cls(**kwargs), FrameDirection.UPSTREAM)
            return
        await super()._queued_broadcast_frame(frame_cls, **kwargs)

    def _queue_ahead_of_audio(self, frame: Frame) -> bool:
        """Queues `frame` just ahead of the first caller audio frame waiting in the input queue; False (nothing
        queued) when none waits, or where pipecat's `queue_frame` would not simply put it in that queue."""
        if self._cancelling or self._enable_direct_mode:
            return self._cancelling  # cancelling: pipecat's queue_frame drops it too
        queue = self._FrameProcessor__input_queue
        system = queue.SYSTEM_PRIORITY
        first = min((order for tier, order, (waiting, _, _) in queue._queue
                     if tier == system and isinstance(waiting, InputAudioRawFrame)), default=None)
        if first is None:
            return False
        self._verdicts_ahead += 1
        # Between the audio frame's arrival count and the one before it, later verdicts after earlier ones.
        key = first - 0.5 / self._verdicts_ahead
        asyncio.PriorityQueue.put_nowait(queue, (system, key, (frame, FrameDirection.DOWNSTREAM, None)))
        return True


def aggregator_pair(context: LLMContext, user_params: LLMUserAggregatorParams
                    ) -> tuple[CallerUserAggregator, LLMAssistantAggregator]:
    """As pipecat's LLMContextAggregatorPair (cascade mode), with the user half above."""
    user = CallerUserAggregator(context, params=user_params)
    if user._vad_controller is not None:
        user._vad_controller._speech_activity_period = USER_SPEAKING_EVERY_SECS
    assistant = LLMAssistantAggregator(context, params=LLMAssistantAggregatorParams(), _paired_user_aggregator=user)
    return user, assistant
