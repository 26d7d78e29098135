"""Local STT: the bundled Whisper tiny.en, shared across calls, fed whole utterances segmented by the VAD."""

from __future__ import annotations

import asyncio
import audioop
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import numpy as np
import soxr
from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, InputAudioRawFrame, TranscriptionFrame, UserAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.utils.time import time_now_iso8601

from pipelines.providers import local_models
from pipelines.providers.vad import QUIET_BELOW_PEAK, SharedSileroVADAnalyzer
from pipelines.providers.whisper_window import transcribe_short

WHISPER_RATE = 16000
BLOCK_SECS = 0.032


def without_quiet_tail(pcm: bytes, sample_rate: int) -> bytes:
    """`pcm` up to its last 32 ms block (counted from the start) within 60 dB of its loudest (QUIET_BELOW_PEAK).

    What Whisper is given: a segment's near-silent tail is cut and pipecat's trailing silence (digital zeros)
    follows the speech instead. So a transcription started as the line fell silent has, byte for byte, the input
    that the segment has at the VAD's stop when nothing but that silence came between."""
    block = int(sample_rate * BLOCK_SECS) * 2
    view = memoryview(pcm)
    levels = [audioop.rms(view[i:i + block], 2) for i in range(0, len(pcm), block)]
    peak = max(levels, default=0)
    if peak == 0:
        return pcm
    last = max(i for i, level in enumerate(levels) if level * QUIET_BELOW_PEAK >= peak)
    return pcm[:(last + 1) * block]


@dataclass(slots=True)
class _EarlyRun:
    """A transcription started before the VAD's stop, and what makes it the segment's when the stop comes."""

    speech: bytes  # the segment's audio when it started
    input: bytes  # what Whisper was given: the segment takes the run when its own input is the same
    run: asyncio.Future
    pause: int | None = None  # started halfway into this pause (else: when the line fell silent)


class LocalWhisperSTTService(SegmentedSTTService):
    """Transcribes each VAD segment with the process-wide Whisper model.

    The pipeline runs at the phone's 8 kHz so the VAD needs no resampling; the segment is upsampled to Whisper's
    16 kHz here in one shot, which costs nothing in latency (unlike a streaming resampler on the input path).
    """

    def __init__(self, *, language: str = "en", beam_size: int = 1, short_window: bool = True, **kwargs):
        # Whisper answers within ~0.2 s of the end of a segment on a 2-core machine (~0.5 s on the full 30 s window,
        # which a long or doubtful utterance still takes: see whisper_window.py); 1 s is the bound the turn
        # strategy waits for a transcript that may never come (noise).
        super().__init__(settings=STTSettings(model="tiny.en", language=language), ttfs_p99_latency=1.0, **kwargs)
        self._language = language
        self._beam_size = beam_size
        self._short_window = short_window  # see whisper_window.py; False: always the fixed 30 s window
        self._vad: SharedSileroVADAnalyzer | None = None
        self._early: _EarlyRun | None = None

    def start_on_pauses(self, vad: SharedSileroVADAnalyzer) -> None:
        """Transcribe before the VAD ends the segment: the caller's reply waits for Whisper (~200–400 ms).

        Two starts, each taking the speech so far:
        - when the line falls near-silent after the words (the VAD's `on_quiet`, ~60 ms after them, usually before
          Silero hears the pause). The segment takes that run only if its own input to Whisper is the same, byte
          for byte (see `without_quiet_tail`): the same transcript, sooner.
        - otherwise when a pause is half of `stop_secs` long (~100 ms after Silero's pause begins). The segment
          takes that run if the VAD's stop ends that same pause: the rest of it is taken for silence.
        A caller who goes on wastes the run. One run on the quiet is in flight at a time."""
        self._vad = vad
        vad.on_pause = self._on_pause
        vad.on_quiet = self._on_quiet

    def _input(self, pcm: bytes) -> bytes:
        return without_quiet_tail(pcm, self.sample_rate) + self._trailing_silence()

    def _start_early(self, pause: int | None = None) -> None:
        speech = bytes(self._audio_buffer)
        given = self._input(speech)
        run = asyncio.ensure_future(local_models.run_inference(self._transcribe, given))
        run.add_done_callback(lambda f: f.cancelled() or f.exception())  # a dropped run's error is not lost
        self._early = _EarlyRun(speech, given, run, pause)

    def _on_quiet(self) -> None:
        if not self._user_speaking or not self.is_usable:
            return
        if self._early is not None and not self._early.run.done():
            return  # a silence inside the words (a breath) is still being transcribed: don't pile runs up
        self._start_early()

    def _on_pause(self, pause: int) -> None:
        if not self._user_speaking or not self.is_usable:
            return
        early = self._early
        if early is not None and early.pause is None and early.input == self._input(bytes(self._audio_buffer)):
            return  # the line fell silent before Silero heard the pause, and only silence came since: that run
        self._start_early(pause)

    def _serves(self, early: _EarlyRun | None, audio: bytes, given: bytes) -> bool:
        if early is None:
            return False
        if early.input == given:
            return True
        return (early.pause is not None and self._vad is not None and early.pause == self._vad.pauses
                and audio.startswith(early.speech))

    async def cleanup(self):
        """pipecat's SegmentedSTTService starts its `_segment_task_handler` on the StartFrame and ends it only in
        stop() (EndFrame) and cancel() (CancelFrame). A call that ends while its pipeline is still starting (the
        caller hangs up at once) gets neither: pipecat then only cleans the processors up, and the task, waiting on
        an empty queue, was left for the runner's "dangling tasks" warning and later "Task was destroyed but it is
        pending!". After an EndFrame or a CancelFrame the task is already gone and this does nothing."""
        await self._cancel_segment_task()  # the base class's own cancel() helper (pipecat 1.14, pinned)
        if self._early is not None:
            self._early.run.cancel()  # an early run nobody will read: its result is dropped, not its thread
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
        if self._short_window:
            text = transcribe_short(model, audio, language=self._language, beam_size=self._beam_size)
            if text is not None:
                return text
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
        # `audio` is the segment and pipecat's trailing silence. A segment that waited behind another transcription
        # can be older than the latest run: that run then stays for its own segment (see start_on_pauses).
        given = self._input(audio)
        taken = self._serves(early, audio, given)
        started = "" if not taken else " (started in the pause)" if early.pause else " (started on the silence)"
        if taken:
            self._early = None
        try:
            if taken:
                text = await early.run
            else:
                text = await local_models.run_inference(self._transcribe, given)
        except Exception as exc:  # a model failure must not kill the call: report and go on
            logger.exception("whisper transcription failed")
            yield ErrorFrame(error=f"whisper: {exc}")
            return
        finally:
            await self.stop_processing_metrics()
        if text:
            logger.debug(f"whisper: [{text}]{started}")
            yield TranscriptionFrame(text, self._user_id, time_now_iso8601())
