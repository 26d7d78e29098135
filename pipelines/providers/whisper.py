"""Local STT: the bundled Whisper tiny.en, shared across calls, fed whole utterances segmented by the VAD."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import numpy as np
import soxr
from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, InputAudioRawFrame, TranscriptionFrame, UserAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.utils.time import time_now_iso8601

from pipelines.providers import local_models
from pipelines.providers.vad import SharedSileroVADAnalyzer

WHISPER_RATE = 16000


class LocalWhisperSTTService(SegmentedSTTService):
    """Transcribes each VAD segment with the process-wide Whisper model.

    The pipeline runs at the phone's 8 kHz so the VAD needs no resampling; the segment is upsampled to Whisper's
    16 kHz here in one shot, which costs nothing in latency (unlike a streaming resampler on the input path).
    """

    def __init__(self, *, language: str = "en", beam_size: int = 1, **kwargs):
        # Whisper answers within ~0.5 s of the end of a segment on a 2-core machine; 1 s is the bound the turn
        # strategy waits for a transcript that may never come (noise).
        super().__init__(settings=STTSettings(model="tiny.en", language=language), ttfs_p99_latency=1.0, **kwargs)
        self._language = language
        self._beam_size = beam_size
        self._vad: SharedSileroVADAnalyzer | None = None
        # (pause number, the speech it transcribes, that transcription in flight)
        self._early: tuple[int, bytes, asyncio.Future] | None = None

    def start_on_pauses(self, vad: SharedSileroVADAnalyzer) -> None:
        """Transcribe once a pause is half of the VAD's `stop_secs` long, not when the VAD ends the segment. The
        caller's reply waits for Whisper (~200–300 ms), and the rest of the pause is trailing silence that changes
        nothing in the transcript, so it comes ~100 ms sooner. A caller who goes on wastes that run."""
        self._vad = vad
        vad.on_pause = self._on_pause

    def _on_pause(self, pause: int) -> None:
        if not self._user_speaking or not self.is_usable:
            return
        speech = bytes(self._audio_buffer)
        early = asyncio.ensure_future(local_models.run_inference(self._transcribe, speech + self._trailing_silence()))
        early.add_done_callback(lambda f: f.cancelled() or f.exception())  # a dropped run's error is not lost
        self._early = (pause, speech, early)

    async def cleanup(self):
        """pipecat's SegmentedSTTService starts its `_segment_task_handler` on the StartFrame and ends it only in
        stop() (EndFrame) and cancel() (CancelFrame). A call that ends while its pipeline is still starting (the
        caller hangs up at once) gets neither: pipecat then only cleans the processors up, and the task, waiting on
        an empty queue, was left for the runner's "dangling tasks" warning and later "Task was destroyed but it is
        pending!". After an EndFrame or a CancelFrame the task is already gone and this does nothing."""
        await self._cancel_segment_task()  # the base class's own cancel() helper (pipecat 1.14, pinned)
        if self._early is not None:
            self._early[2].cancel()  # an early run nobody will read: its result is dropped, not its thread
            self._early = None
        await super().cleanup()

    @property
    def wants_wav_segments(self) -> bool:
        return False

    def can_generate_metrics(self) -> bool:
        return True

    async def process_audio_frame(self, frame: InputAudioRawFrame, direction: FrameDirection):
        """As the base class, but trims the 1 s pre-roll in place: the base class slices a new ~16 KB buffer on
        every 20 ms frame while the caller is silent, which is most of a call."""
        self._user_id = frame.user_id if isinstance(frame, UserAudioRawFrame) else ""
        self._audio_buffer += frame.audio
        excess = len(self._audio_buffer) - self._audio_buffer_size_1s
        if not self._user_speaking and excess > 0:
            del self._audio_buffer[:excess]

    def _transcribe(self, pcm: bytes) -> str:
        audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        if self.sample_rate != WHISPER_RATE:
            audio = soxr.resample(audio, self.sample_rate, WHISPER_RATE)
        model = local_models.get("whisper")
        # temperature 0 only: faster-whisper's default retries a doubtful decode at five more temperatures, which
        # took tiny.en from ~180 ms to ~1.1 s on a misheard phrase, while the caller waited for the reply.
        segments, _ = model.transcribe(
            audio, language=self._language, beam_size=self._beam_size, vad_filter=False,
            condition_on_previous_text=False, temperature=0.0,
        )
        return " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.6).strip()

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        await self.start_processing_metrics()
        early = self._early
        # The run is this segment's when the VAD's stop ended the pause it started in, and the segment is that
        # speech plus the rest of the pause. A segment that waited behind another transcription can be older than
        # the latest pause: that run then stays for its own segment.
        from_pause = (early is not None and self._vad is not None and early[0] == self._vad.pauses
                      and audio.startswith(early[1]))
        if from_pause:
            self._early = None
        try:
            if from_pause:
                text = await early[2]
            else:
                text = await local_models.run_inference(self._transcribe, audio)
        except Exception as exc:  # a model failure must not kill the call: report and go on
            logger.exception("whisper transcription failed")
            yield ErrorFrame(error=f"whisper: {exc}")
            return
        finally:
            await self.stop_processing_metrics()
        if text:
            logger.debug(f"whisper: [{text}]" + (" (started in the pause)" if from_pause else ""))
            yield TranscriptionFrame(text, self._user_id, time_now_iso8601())
