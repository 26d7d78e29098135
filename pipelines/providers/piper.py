"""Local TTS: the bundled Piper voice, shared across calls, resampled to the line rate once per sentence."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import numpy as np
import soxr
from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

from pipelines.providers import local_models


def synthesize(text: str, sample_rate: int) -> list[bytes]:
    """16-bit mono PCM at `sample_rate`, one buffer per Piper chunk (blocking: run it on the inference pool)."""
    voice = local_models.get("piper")
    out = []
    for chunk in voice.synthesize(text):
        pcm = np.frombuffer(chunk.audio_int16_bytes, dtype=np.int16)
        if chunk.sample_rate != sample_rate:
            pcm = soxr.resample(pcm, chunk.sample_rate, sample_rate)
        out.append(pcm.astype(np.int16).tobytes())
    return out


class LocalPiperTTSService(TTSService):
    """Synthesizes sentence by sentence (pipecat aggregates LLM text into sentences before `run_tts`).

    Each Piper chunk is a whole sentence, so it is resampled from 22.05 kHz to the output rate in one call rather
    than through a streaming resampler, which would hold back its tail until the next sentence.
    """

    def __init__(self, *, voice: str = "en_US-joe-medium", **kwargs):
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=TTSSettings(model=None, voice=voice, language=None),
            **kwargs,
        )

    def can_generate_metrics(self) -> bool:
        return True

    def _synthesize(self, text: str) -> list[bytes]:
        return synthesize(text, self.sample_rate)

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        await self.start_tts_usage_metrics(text)
        try:
            chunks = await local_models.run_inference(self._synthesize, text)
        except Exception as exc:
            logger.exception("piper synthesis failed")
            yield ErrorFrame(error=f"piper: {exc}")
            return
        finally:
            await self.stop_ttfb_metrics()
        for audio in chunks:
            yield TTSAudioRawFrame(audio=audio, sample_rate=self.sample_rate, num_channels=1, context_id=context_id)
