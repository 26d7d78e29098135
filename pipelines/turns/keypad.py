"""Keypad digits: pipecat's DTMFAggregator without the caller's audio crossing it, and digits for a
speech-to-speech model.

The keypad's processors sit between the input transport and the STT (or the realtime model), so every 40 ms frame
of the caller's audio crossed each of them: a queue put, a wake-up of its input task and a push, per frame per
call, to be handed on untouched. Here the frame goes straight into the next processor's queue, in the order it
came. It may now pass another system frame waiting in the keypad's queue (an interruption, say); it never waited
behind data frames there, since pipecat's queues take system frames first. The next processor takes nothing
before its StartFrame, which outranks everything in its queue. Digits, the StartFrame and everything else still go
through the keypad's processors. Tied to pipecat 1.14's `FrameProcessor.queue_frame`
and `_next`, pinned like the other seams.

For a speech-to-speech model, pipecat's DTMFAggregator turns digits into a `TranscriptionFrame`
("DTMF: 12#"), which a cascaded pipeline's LLM reads from its context; a realtime model reads no such context.
So, besides the transcription (the caller's turn in the transcript), the digits are handed to the model itself as
an appended message: queued straight into the model's service, since the user aggregator in between would keep an
append for its own context. pipecat's realtime service sends it as a conversation item, and the assistant
aggregator then asks for a response (held until any response already running is done)."""

from __future__ import annotations

from pipecat.frames.frames import Frame, InputAudioRawFrame, LLMMessagesAppendFrame, TranscriptionFrame
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

DTMF_PREFIX = "DTMF: "  # pipecat's DTMFAggregator default


class _CallersAudioPassesBy(FrameProcessor):
    async def queue_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM, callback=None):
        if (direction is FrameDirection.DOWNSTREAM and isinstance(frame, InputAudioRawFrame) and callback is None
                and self._next is not None):
            await self._next.queue_frame(frame, direction)
            return
        await super().queue_frame(frame, direction, callback)


class KeypadAggregator(_CallersAudioPassesBy, DTMFAggregator):
    """pipecat's DTMFAggregator ("DTMF: 12#" after a pause or `#`), which the caller's audio passes by."""


class KeypadToRealtime(_CallersAudioPassesBy):
    def __init__(self, model: FrameProcessor, **kwargs):
        super().__init__(**kwargs)
        self._model = model

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame) and frame.text.startswith(DTMF_PREFIX):
            digits = frame.text[len(DTMF_PREFIX):]
            await self._model.queue_frame(LLMMessagesAppendFrame(
                messages=[{"role": "user", "content": f"The caller pressed these keys on their phone keypad: {digits}"}],
                run_llm=True))
