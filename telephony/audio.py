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


class AudioFileError(ValueError):
    """A file that cannot be read as a WAV: the message names the file and says why."""


def _read_wav(path: Path) -> tuple[bytes, int, int]:
    """(interleaved 16-bit PCM, rate, channels) of a WAV file with some audio in it."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except wave.Error as exc:  # `wave` reads integer PCM only
        raw, rate, channels = _read_other_wav(path, exc)
    except EOFError:
        raise AudioFileError(f"{path}: not a WAV file (it ends inside its header)") from None
    except OSError as exc:
        raise AudioFileError(f"{path}: {exc.strerror or exc}") from None
    else:
        raw = raw[:len(raw) - len(raw) % (width * channels)]  # a file cut short mid-frame: its whole frames
        if width == 1:
            raw = audioop.bias(raw, 1, -128)  # 8-bit WAV is unsigned (silence is 128); audioop's is signed
        if width != 2:
            raw = audioop.lin2lin(raw, width, 2)
    if rate <= 0:
        raise AudioFileError(f"{path}: not a WAV file (sample rate {rate})")
    if not raw:
        raise AudioFileError(f"{path}: the WAV file holds no audio")
    return raw, rate, channels


def _read_other_wav(path: Path, refused: wave.Error) -> tuple[bytes, int, int]:
    """What `wave` refuses: float samples (Audacity's default export), μ-law, A-law, read by libsndfile (the
    soundfile package, which pipecat depends on)."""
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError):  # not something libsndfile reads either: wave says why best
        raise AudioFileError(f"{path}: cannot be read as a WAV file ({refused})") from None
    # Float samples may go past full scale: clipped here, not wrapped around by the integer cast.
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    return pcm.tobytes(), int(rate), samples.shape[1]


def check_wav(path: str | Path) -> None:
    """Raise AudioFileError unless `wav_to_ulaw` can read the file: checked before a call, not in the middle."""
    _read_wav(Path(path))


def wav_to_ulaw(path: str | Path) -> bytes:
    """Any WAV (integer PCM of any width, float, μ-law, A-law; any rate; mono or not) → 8 kHz mono μ-law.
    AudioFileError says why a file cannot be read."""
    raw, rate, channels = _read_wav(Path(path))
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
