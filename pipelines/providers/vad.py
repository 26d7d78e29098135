"""Silero VAD with one ONNX session per process instead of one per call.

pipecat's SileroVADAnalyzer opens its own onnxruntime session (model, arena, threads) in every constructor; the
session is stateless between runs (the recurrent state lives in the wrapper and is passed in on each call), so
every call can share one and keep only its state. Tied to pipecat 1.14's SileroVADAnalyzer internals
(`_model`, `_windows_since_reset`, `_low_confidence_windows`), which the pinned version guarantees.
"""

from __future__ import annotations

from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams

from pipelines.providers import local_models


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
