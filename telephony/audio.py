"""Audio file helpers for callers and tests: WAV in any format → 8 kHz μ-law, and μ-law → WAV."""

from __future__ import annotations

import audioop
import wave
from pathlib import Path

import numpy as np
import soxr

LINE_RATE = 8000
FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
SILENCE_ULAW = b"\xff" * FRAME_BYTES


def wav_to_ulaw(path: str | Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raw = audioop.lin2lin(raw, width, 2)
    pcm = np.frombuffer(raw, dtype=np.int16)
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if rate != LINE_RATE:
        pcm = soxr.resample(pcm, rate, LINE_RATE).astype(np.int16)
    return audioop.lin2ulaw(pcm.tobytes(), 2)


def ulaw_to_wav(ulaw: bytes, path: str | Path) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(LINE_RATE)
        w.writeframes(audioop.ulaw2lin(ulaw, 2))


def ulaw_rms(ulaw: bytes) -> float:
    return float(audioop.rms(audioop.ulaw2lin(ulaw, 2), 2)) if ulaw else 0.0


def speech_bounds(ulaw: bytes, threshold: float = 500.0) -> tuple[float, float]:
    """(leading, trailing) silence of an utterance in seconds, by 20 ms frame loudness."""
    frames = [ulaw[i:i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]
    loud = [i for i, f in enumerate(frames) if ulaw_rms(f) > threshold]
    if not loud:
        return len(frames) * 0.02, 0.0
    return loud[0] * 0.02, (len(frames) - 1 - loud[-1]) * 0.02
