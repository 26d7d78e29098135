"""Smart-turn v3 end-of-turn detection with one ONNX session and one thread pool per process, not per call.

pipecat's LocalSmartTurnAnalyzerV3 opens an onnxruntime session and starts a thread in every constructor. The
session is stateless between runs (each call keeps its own audio buffer in the analyzer), so calls share it and
run inference on the shared local-model pool. Tied to pipecat 1.14's `_session` / `_model_executor`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn, SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

from pipelines.providers import local_models


class SharedSmartTurnAnalyzer(LocalSmartTurnAnalyzerV3):
    def __init__(self, *, max_silence_secs: float, sample_rate: int | None = None):
        # Deliberately skipping LocalSmartTurnAnalyzerV3.__init__: it would open a session of its own.
        BaseSmartTurn.__init__(self, sample_rate=sample_rate, params=SmartTurnParams(stop_secs=max_silence_secs))
        self._log_data = False
        self._session = local_models.get("smart_turn")

    @property
    def _model_executor(self) -> ThreadPoolExecutor:
        return local_models.INFERENCE_POOL

    async def cleanup(self):
        pass  # the pool is the process's, not this call's
