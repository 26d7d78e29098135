"""OpenAI Realtime on a phone line: G.711 μ-law in and out, at the line's 8 kHz.

pipecat's OpenAIRealtimeLLMService always asks for 24 kHz PCM, so a phone call would be resampled 8→24 kHz on the way
in (a stream resampler that adds ~100 ms) and 24→8 kHz on the way out. The Realtime API speaks PCMU natively, so this
subclass asks for `audio/pcmu` both ways: the caller's μ-law bytes go to OpenAI as Twilio sent them, and OpenAI's
μ-law comes back at 8 kHz, where only the exact G.711 table lookup to the pipeline's PCM form remains.
"""

from __future__ import annotations

import audioop
import base64

from pipecat.frames.frames import Frame, InputAudioRawFrame, TTSAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService

from config.agent import AgentConfig, RealtimeConfig
from pipelines.call_pipeline import LINE_SAMPLE_RATE, ULAW_METADATA_KEY
_ULAW_BYTES_PER_MS = LINE_SAMPLE_RATE // 1000


def session_properties(agent: AgentConfig, section: RealtimeConfig) -> events.SessionProperties:
    return events.SessionProperties(
        instructions=agent.system_prompt,
        audio=events.AudioConfiguration(
            input=events.AudioInput(
                format=events.PCMUAudioFormat(),
                transcription=events.InputAudioTranscription(language=(agent.transcriber.language
                                                                       if agent.transcriber else "en")),
                turn_detection=events.TurnDetection(silence_duration_ms=int(agent.turn.silence_secs * 1000)),
            ),
            output=events.AudioOutput(format=events.PCMUAudioFormat(), voice=section.voice),
        ),
    )


class PhoneRealtimeService(OpenAIRealtimeLLMService):
    async def _send_user_audio(self, frame: InputAudioRawFrame):
        ulaw = frame.metadata.get(ULAW_METADATA_KEY) if frame.sample_rate == LINE_SAMPLE_RATE else None
        if ulaw is None:
            if frame.sample_rate != LINE_SAMPLE_RATE:
                raise ValueError(f"realtime phone audio must be {LINE_SAMPLE_RATE} Hz, got {frame.sample_rate}")
            ulaw = audioop.lin2ulaw(frame.audio, 2)
        await self.send_client_event(events.InputAudioBufferAppendEvent(audio=base64.b64encode(ulaw).decode()))

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        if isinstance(frame, TTSAudioRawFrame) and frame.sample_rate != LINE_SAMPLE_RATE:
            # The base class labels every audio delta 24 kHz PCM; with PCMU sessions it is 8 kHz μ-law.
            frame.audio = audioop.ulaw2lin(frame.audio, 2)
            frame.sample_rate = LINE_SAMPLE_RATE
            frame.num_frames = len(frame.audio) // 2
        await super().push_frame(frame, direction)

    def _calculate_audio_duration_ms(self, total_bytes: int, sample_rate: int = LINE_SAMPLE_RATE,
                                     bytes_per_sample: int = 1) -> int:
        # Truncation on barge-in is computed from bytes received: μ-law is one byte per 8 kHz sample.
        return total_bytes // _ULAW_BYTES_PER_MS
