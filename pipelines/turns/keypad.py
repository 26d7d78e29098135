"""Keypad digits for a speech-to-speech model. pipecat's DTMFAggregator turns digits into a `TranscriptionFrame`
("DTMF: 12#"), which a cascaded pipeline's LLM reads from its context; a realtime model reads no such context.
So, besides the transcription (the caller's turn in the transcript), the digits are handed to the model itself as
an appended message: queued straight into the model's service, since the user aggregator in between would keep an
append for its own context. pipecat's realtime service sends it as a conversation item, and the assistant
aggregator then asks for a response (held until any response already running is done)."""

from __future__ import annotations

from pipecat.frames.frames import Frame, LLMMessagesAppendFrame, TranscriptionFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

DTMF_PREFIX = "DTMF: "  # pipecat's DTMFAggregator default


class KeypadToRealtime(FrameProcessor):
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
