"""Silero VAD with one ONNX session per process instead of one per call, run only where it can change the answer.

pipecat's SileroVADAnalyzer opens its own onnxruntime session (model, arena, threads) in every constructor; the
session is stateless between runs (the recurrent state lives in the wrapper and is passed in on each call), so
every call can share one and keep only its state. Tied to pipecat 1.14's VADAnalyzer and SileroVADAnalyzer
internals (`_vad_buffer`, `_vad_state`, the start/stop counters, `_model`), which the pinned version guarantees.

pipecat calls a window speech when the model's confidence *and* the line's smoothed volume pass their thresholds,
and it hops to a thread for every audio frame to score every window. A window too quiet to pass `min_volume` is
not speech whatever the model says, so it is not scored, and a frame with no loud-enough window costs no thread
hop either: a connected caller who is not talking (most of a call) costs a loudness measure per window. The
decisions are pipecat's, window for window; only the model's recurrent state differs (reset after a quiet stretch,
as pipecat itself resets it every few seconds of non-speech).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState

from pipelines.providers import local_models

# Scoring a window takes ~70 µs: two threads serve every call's windows (each call awaits its own in order), where
# pipecat would start a thread per call. Kept apart from the STT/TTS pool so a transcription never delays a barge-in.
_VAD_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="voxline-vad")


class _SharedSileroModel(SileroOnnxModel):
    def __init__(self):  # deliberately not calling super(): it would open a session of its own
        self.session = local_models.get("silero")
        self.reset_states()
        self.sample_rates = [8000, 16000]


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    def __init__(self, *, sample_rate: int | None = None, params: VADParams | None = None):
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._model = _SharedSileroModel()
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        self._model_fresh = True  # no state carried over from earlier audio

    async def analyze_audio(self, buffer: bytes) -> VADState:
        self._vad_buffer += buffer
        size = self._vad_frames_num_bytes
        if len(self._vad_buffer) < size:
            return self._vad_state
        windows, volumes = [], []
        while len(self._vad_buffer) >= size:
            window, self._vad_buffer = self._vad_buffer[:size], self._vad_buffer[size:]
            self._prev_volume = self._get_smoothed_volume(window)
            windows.append(window)
            volumes.append(self._prev_volume)
        loud = [w for w, v in zip(windows, volumes, strict=True) if v >= self._params.min_volume]
        if loud:
            self._model_fresh = False
            scores = iter(await asyncio.get_running_loop().run_in_executor(_VAD_POOL, self._score, loud))
        elif not self._model_fresh:
            self._model.reset_states()
            self._model_fresh = True
        for volume in volumes:
            speaking = volume >= self._params.min_volume and next(scores) >= self._params.confidence
            self._advance(speaking)
        return self._settle()

    def _score(self, windows: list[bytes]) -> list[float]:
        return [float(np.asarray(self.voice_confidence(w)).reshape(-1)[0]) for w in windows]

    def _advance(self, speaking: bool) -> None:
        """One window of pipecat's VADAnalyzer._run_analyzer."""
        state = self._vad_state
        if speaking:
            if state == VADState.QUIET:
                self._vad_state = VADState.STARTING
                self._vad_starting_count = 1
            elif state == VADState.STARTING:
                self._vad_starting_count += 1
            elif state == VADState.STOPPING:
                self._vad_state = VADState.SPEAKING
                self._vad_stopping_count = 0
        elif state == VADState.STARTING:
            self._vad_state = VADState.QUIET
            self._vad_starting_count = 0
        elif state == VADState.SPEAKING:
            self._vad_state = VADState.STOPPING
            self._vad_stopping_count = 1
        elif state == VADState.STOPPING:
            self._vad_stopping_count += 1

    def _settle(self) -> VADState:
        """The end of pipecat's VADAnalyzer._run_analyzer: enough windows either way change the state."""
        if self._vad_state == VADState.STARTING and self._vad_starting_count >= self._vad_start_frames:
            self._vad_state = VADState.SPEAKING
            self._vad_starting_count = 0
        if self._vad_state == VADState.STOPPING and self._vad_stopping_count >= self._vad_stop_frames:
            self._vad_state = VADState.QUIET
            self._vad_stopping_count = 0
        return self._vad_state
