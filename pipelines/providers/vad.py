"""Silero VAD with one ONNX session per process instead of one per call, run only where it can change the answer,
and run for every call's pending window at once.

pipecat's SileroVADAnalyzer opens its own onnxruntime session (model, arena, threads) in every constructor; the
session is stateless between runs (the recurrent state lives in the wrapper and is passed in on each call), so
every call can share one and keep only its state. Tied to pipecat 1.14's VADAnalyzer and SileroVADAnalyzer
internals (`_vad_buffer`, `_vad_state`, the start/stop counters, `_model`, `_maybe_reset_model`), which the pinned
version guarantees.

pipecat calls a window speech when the model's confidence *and* the line's smoothed volume pass their thresholds,
and it hops to a thread for every audio frame to score every window. A window too quiet to pass `min_volume` is
not speech whatever the model says, so it is not scored, and a frame with no loud-enough window costs no thread
hop either: a connected caller who is not talking (most of a call) costs a loudness measure per window. The
decisions are pipecat's, window for window; only the model's recurrent state differs (reset after a quiet stretch,
as pipecat itself resets it every few seconds of non-speech).

On a noisy line every window is loud enough, and one thread hop and one ONNX run per window per call was most of
what a call cost. So the windows of all calls are scored together: at most one run every `RUN_EVERY_SECS` (10 ms)
per event loop, each row with its own call's state and context (the same arithmetic as a run per call). A window
that comes within 10 ms of the last run waits for the next one, with the others that came meanwhile: a run of one
row costs ~77 µs and of twenty ~430 µs (~22 µs a row). At one call runs are 32 ms apart and nothing waits; at
twenty noisy calls a run scores ~6 windows, and the VAD's CPU per call drops by a third (`bench/vad_batch.py`:
0.87 → 0.59 % of a core per call). A verdict waits at most 10 ms more, against the 100 ms of speech the VAD needs
before it starts.
"""

from __future__ import annotations

import asyncio
import audioop
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from loguru import logger

from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.audio.volume import AudioVolumeTracker

from pipelines.providers import local_models

# Kept apart from the STT/TTS pool so a transcription never delays a barge-in. One batch runs at a time per event
# loop and sample rate; the second thread serves the other rate or another loop (tests).
_VAD_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="voxline-vad")
RUN_EVERY_SECS = 0.01  # VOXLINE_VAD_BATCH_MS (set_batch_window) where the server sets it
_CONTEXT = {8000: 32, 16000: 64}  # samples of the previous window that Silero v5 prepends, as pipecat's wrapper does


def set_batch_window(secs: float) -> None:
    """At most one Silero run every `secs` per event loop (the server's VOXLINE_VAD_BATCH_MS)."""
    global RUN_EVERY_SECS
    RUN_EVERY_SECS = secs


def _run_batch(rows: list[tuple[_SharedSileroModel, np.ndarray]], sample_rate: int) -> list[float]:
    """One ONNX run for `rows` (each a call's model state and a float32 window); updates each row's state."""
    context = _CONTEXT[sample_rate]
    size = len(rows[0][1])
    x = np.empty((len(rows), context + size), dtype=np.float32)
    state = np.empty((2, len(rows), 128), dtype=np.float32)
    for i, (model, window) in enumerate(rows):
        x[i, :context] = model._context[0] if model._context.shape[1] else 0.0
        x[i, context:] = window
        state[:, i, :] = model._state[:, 0, :]
    out, new_state = model.session.run(None, {"input": x, "state": state, "sr": np.array(sample_rate, dtype="int64")})
    for i, (model, _) in enumerate(rows):
        model._state = new_state[:, i:i + 1, :].copy()
        model._context = x[i:i + 1, -context:].copy()
        model._last_sr, model._last_batch_size = sample_rate, 1
    return [float(v) for v in np.asarray(out).reshape(len(rows), -1)[:, 0]]


class _Batcher:
    """Scores windows of one sample rate for every call on one event loop: one run in flight, at most one run every
    RUN_EVERY_SECS; the windows that arrive meanwhile make the next run."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sample_rate: int):
        self._loop, self._rate = loop, sample_rate
        self._waiting: list[tuple[_SharedSileroModel, np.ndarray, asyncio.Future]] = []
        self._busy = False
        self._last_run = -1.0

    def score(self, model: _SharedSileroModel, window: np.ndarray) -> asyncio.Future:
        future = self._loop.create_future()
        self._waiting.append((model, window, future))
        if not self._busy:
            self._busy = True
            self._submit_soon()
        return future

    def _submit_soon(self) -> None:
        delay = self._last_run + RUN_EVERY_SECS - self._loop.time()
        if delay > 0:
            self._loop.call_later(delay, self._submit)
        else:
            self._submit()

    def _submit(self) -> None:
        batch, self._waiting = self._waiting, []
        self._last_run = self._loop.time()
        done = _VAD_POOL.submit(_run_batch, [(model, window) for model, window, _ in batch], self._rate)
        done.add_done_callback(lambda f: self._loop.call_soon_threadsafe(self._settle, batch, f))

    def _settle(self, batch, done) -> None:
        try:
            scores = done.result()
        except Exception as exc:  # as pipecat's voice_confidence: a failed run scores 0 (not speech), the call goes on
            logger.error(f"Error analyzing audio with Silero VAD: {exc}")
            scores = [0.0] * len(batch)
        for (_, _, future), score in zip(batch, scores, strict=True):
            if not future.done():
                future.set_result(score)
        if self._waiting:
            self._submit_soon()
        else:
            self._busy = False


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Batcher]] = weakref.WeakKeyDictionary()


def _batcher(sample_rate: int) -> _Batcher:
    loop = asyncio.get_running_loop()
    by_rate = _batchers.setdefault(loop, {})
    batcher = by_rate.get(sample_rate)
    if batcher is None:
        batcher = by_rate[sample_rate] = _Batcher(loop, sample_rate)
    return batcher


# Near silence after speech: a stretch whose RMS is this many times under the loudest of the utterance (60 dB).
# A line that falls that quiet when the words end (digital silence, VoIP, noise-suppressed mobiles) lets Whisper
# start before Silero hears the pause (whisper.py): Silero's confidence falls ~60 ms after the words, the RMS at
# once. A line with noise less than 60 dB under the speech never gets there, and nothing changes for it.
QUIET_BELOW_PEAK = 1000
QUIET_WINDOWS = 2  # a stop consonant's closure can be one window


# pipecat's volume is BS.1770 loudness over the last 400 ms (one gating block), measured for every 32 ms window
# (~23 µs each at 8 kHz, most of what a silent caller's VAD costs). A block below the absolute gate, -70 LKFS,
# measures -inf, which pipecat normalizes to 0. K-weighting raises no frequency by more than 4.3 dB at 8 or 16 kHz
# (2.67× the power at most), and a filter started from rest cannot put out more energy than that gain allows. So a
# block whose RMS is below 6 (16-bit units; `audioop.rms` rounds down, hence 5) measures at most
# -0.691 + 10·log10(2.8 · (6/32768)²) ≈ -71 LKFS: exactly 0, known for the price of one RMS (~2 µs). That covers
# digital silence (muted, VoIP and WebRTC lines, carriers' silence suppression) and lines quieter than ~-75 dBFS.
BELOW_GATE_RMS = 5


class _GatedVolume(AudioVolumeTracker):
    @property
    def volume(self) -> float:
        if self._volume is None and audioop.rms(self._buffer, 2) <= BELOW_GATE_RMS:
            self._volume = 0.0
        return super().volume


class _SharedSileroModel(SileroOnnxModel):
    def __init__(self):  # deliberately not calling super(): it would open a session of its own
        self.session = local_models.get("silero")
        self.reset_states()
        self.sample_rates = [8000, 16000]


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    def __init__(self, *, sample_rate: int | None = None, params: VADParams | None = None):
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        # For an STT that starts on a pause before the VAD calls it the end of speech (whisper.py): called with the
        # pause's number once it is half of `stop_secs` long. `pauses` counts the pauses so far.
        self.on_pause: Callable[[int], None] | None = None
        self.pauses = 0
        # Sooner still: called when the line goes near-silent after speech (QUIET_WINDOWS windows QUIET_BELOW_PEAK
        # under the utterance's loudest), often before Silero hears the pause.
        self.on_quiet: Callable[[], None] | None = None
        # For a turn rule that counts the silence from there (pipelines/turns/after_pause.py): with `track_quiet`,
        # `quiet_since` is when (time.monotonic()) the line fell near-silent, while it still is; None otherwise.
        # Kept past the VAD's stop, until the caller speaks again.
        self.track_quiet = False
        self.quiet_since: float | None = None
        self._peak_rms = 0
        self._quiet_run = 0
        self._model = _SharedSileroModel()
        self._volume_tracker = _GatedVolume()
        self._windows_since_reset = 0
        self._low_confidence_windows = 0
        self._model_fresh = True  # no state carried over from earlier audio

    def hears_nothing(self) -> bool:
        """No speech heard, starting or stopping: what pipecat calls QUIET, as of the last audio analyzed."""
        return self._vad_state == VADState.QUIET

    async def analyze_audio(self, buffer: bytes) -> VADState:
        self._vad_buffer += buffer
        size = self._vad_frames_num_bytes
        if len(self._vad_buffer) < size:
            return self._vad_state
        arrived = time.monotonic()  # when the newest audio in the buffer was heard (or a little after)
        follow = self.on_quiet is not None or self.track_quiet
        quiet = True
        while len(self._vad_buffer) >= size:
            window, self._vad_buffer = self._vad_buffer[:size], self._vad_buffer[size:]
            self._prev_volume = volume = self._get_smoothed_volume(window)
            speaking = False
            if volume >= self._params.min_volume:
                quiet = self._model_fresh = False
                confidence = await _batcher(self.sample_rate).score(
                    self._model, np.frombuffer(window, np.int16).astype(np.float32) / 32768.0)
                self._maybe_reset_model(confidence)  # pipecat's periodic reset, as its voice_confidence does
                speaking = confidence >= self._params.confidence
            self._advance(speaking)
            if follow:
                if self._vad_state != VADState.QUIET:
                    if not self._peak_rms:
                        self.quiet_since = None  # a new utterance
                    self._follow_level(window, arrived - len(self._vad_buffer) / (2 * self.sample_rate))
                elif self._peak_rms:
                    self._peak_rms = self._quiet_run = 0  # a new utterance measures against its own peak
        if quiet and not self._model_fresh:
            self._model.reset_states()
            self._model_fresh = True
        return self._settle()

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
            self.pauses += 1
        elif state == VADState.STOPPING:
            self._vad_stopping_count += 1
        if (self.on_pause is not None and self._vad_state == VADState.STOPPING
                and self._vad_stopping_count == max(1, self._vad_stop_frames // 2)):
            self.on_pause(self.pauses)

    def _follow_level(self, window: bytes, window_end: float) -> None:
        """From the first window of speech to the VAD's stop: the line's level against the utterance's peak.
        `window_end`: when the window's last sample was heard."""
        rms = audioop.rms(window, 2)
        self._peak_rms = max(self._peak_rms, rms)
        if rms * QUIET_BELOW_PEAK < self._peak_rms:
            self._quiet_run += 1
            if self._quiet_run == QUIET_WINDOWS and self._vad_state != VADState.STARTING:
                self.quiet_since = window_end - QUIET_WINDOWS * self._vad_frames / self.sample_rate
                if self.on_quiet is not None:
                    self.on_quiet()
        else:
            self._quiet_run = 0
            self.quiet_since = None

    def _settle(self) -> VADState:
        """The end of pipecat's VADAnalyzer._run_analyzer: enough windows either way change the state."""
        if self._vad_state == VADState.STARTING and self._vad_starting_count >= self._vad_start_frames:
            self._vad_state = VADState.SPEAKING
            self._vad_starting_count = 0
        if self._vad_state == VADState.STOPPING and self._vad_stopping_count >= self._vad_stop_frames:
            self._vad_state = VADState.QUIET
            self._vad_stopping_count = 0
        return self._vad_state
