"""Audio shared by the emulators: wire encodings, utterance segmentation, and the bundled Whisper and Piper.

Everything here that touches a model blocks: run it through `local_models.run_inference` (or a thread).
"""

from __future__ import annotations

import asyncio
import audioop
import re
from dataclasses import dataclass

import numpy as np
import soxr
from pipecat.audio.vad.vad_analyzer import VADParams, VADState

from pipelines.providers import local_models

WHISPER_RATE = 16000

# Every provider's name for the same three codecs.
_CODECS = {
    "linear16": "pcm16", "pcm_s16le": "pcm16", "pcm16": "pcm16", "audio/pcm": "pcm16",
    "mulaw": "mulaw", "pcm_mulaw": "mulaw", "g711_ulaw": "mulaw", "audio/pcmu": "mulaw",
    "alaw": "alaw", "pcm_alaw": "alaw", "g711_alaw": "alaw", "audio/pcma": "alaw",
    "pcm_f32le": "f32",
}


def codec(encoding: str) -> str | None:
    return _CODECS.get(encoding)


def decode(data: bytes, encoding: str) -> bytes:
    """Wire bytes → 16-bit little-endian PCM."""
    kind = _CODECS[encoding]
    if kind == "mulaw":
        return audioop.ulaw2lin(data, 2)
    if kind == "alaw":
        return audioop.alaw2lin(data, 2)
    if kind == "f32":
        return (np.clip(np.frombuffer(data, np.float32), -1, 1) * 32767).astype(np.int16).tobytes()
    return data[: len(data) - len(data) % 2]


def encode(pcm: bytes, encoding: str) -> bytes:
    kind = _CODECS[encoding]
    if kind == "mulaw":
        return audioop.lin2ulaw(pcm, 2)
    if kind == "alaw":
        return audioop.lin2alaw(pcm, 2)
    if kind == "f32":
        return (np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0).tobytes()
    return pcm


def bytes_per_second(encoding: str, rate: int) -> int:
    return rate * {"pcm16": 2, "mulaw": 1, "alaw": 1, "f32": 4}[_CODECS[encoding]]


def transcribe(pcm: bytes, rate: int) -> str:
    """One utterance through the shared Whisper, upsampled to its 16 kHz in one shot (as whisper.py does)."""
    audio = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    if audio.size < rate // 10:
        return ""
    if rate != WHISPER_RATE:
        audio = soxr.resample(audio, rate, WHISPER_RATE)
    segments, _ = local_models.get("whisper").transcribe(
        audio, language="en", beam_size=1, vad_filter=False, condition_on_previous_text=False
    )
    return " ".join(s.text.strip() for s in segments if s.no_speech_prob < 0.6).strip()


def synthesize(text: str, rate: int) -> bytes:
    """Text → 16-bit PCM at `rate` with the shared Piper voice, resampled in one call per piece of text."""
    out = []
    for chunk in local_models.get("piper").synthesize(text):
        pcm = np.frombuffer(chunk.audio_int16_bytes, dtype=np.int16)
        if chunk.sample_rate != rate:
            pcm = soxr.resample(pcm, chunk.sample_rate, rate).astype(np.int16)
        out.append(pcm.tobytes())
    return b"".join(out)


_SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+|$)")


def sentences(text: str) -> list[str]:
    """Synthesis pieces: one per sentence, so the first audio goes out before the whole reply is made."""
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def word_times(text: str, start: float, duration: float) -> list[tuple[str, float, float]]:
    """(word, start, end) spread over `duration` by length: no model here knows real word times."""
    words = text.split()
    total = sum(len(w) for w in words) or 1
    out, t = [], start
    for w in words:
        d = duration * len(w) / total
        out.append((w, round(t, 3), round(t + d, 3)))
        t += d
    return out


@dataclass
class Segment:
    kind: str  # "start": speech began; "stop": it ended (audio holds the utterance); "cut": too long, split
    at: float  # seconds of stream audio
    audio: bytes = b""
    start: float = 0.0


class Segmenter:
    """Cuts a stream of 16-bit PCM into utterances with the shared Silero VAD. Blocking: feed it from a thread.

    Silero scores 8 or 16 kHz only, so other rates are resampled for the VAD alone; the utterance keeps the
    stream's own rate and is resampled once, for Whisper.
    """

    # Silero runs in `feed`: the emulators hand it to a thread. A cheap stand-in (bench/fast_providers.py) says
    # False and is fed on the loop, which saves a thread hop per audio message (the load benchmark's Deepgram
    # emulator at 40 calls: 4-5 % of a core instead of 7-10 %).
    blocking = True

    def __init__(self, rate: int, *, threshold: float = 0.5, start_secs: float = 0.2, stop_secs: float = 0.5,
                 preroll_secs: float = 0.3, min_volume: float = 0.4, max_secs: float | None = None):
        from pipelines.providers.vad import SharedSileroVADAnalyzer

        self.rate = rate
        self._vad_rate = rate if rate in (8000, 16000) else 16000
        self._resampler = (None if rate == self._vad_rate
                           else soxr.ResampleStream(rate, self._vad_rate, 1, dtype="int16"))
        params = VADParams(confidence=threshold, start_secs=start_secs, stop_secs=stop_secs, min_volume=min_volume)
        self._vad = SharedSileroVADAnalyzer(sample_rate=self._vad_rate, params=params)
        self._vad.set_sample_rate(self._vad_rate)
        self._window = self._vad.num_frames_required() * 2
        self._start_secs, self._stop_secs = start_secs, stop_secs
        self._keep = int((preroll_secs + start_secs + 0.1) * rate) * 2
        self._max = int(max_secs * rate) * 2 if max_secs else None
        self._pending = bytearray()
        self._scored = 0
        self._audio = bytearray()
        self.received = 0
        self.speaking = False
        self.started_at = 0.0

    @property
    def now(self) -> float:
        return self.received / self.rate

    def feed(self, pcm: bytes) -> list[Segment]:
        out: list[Segment] = []
        self._audio += pcm
        self.received += len(pcm) // 2
        if self._resampler is not None:
            pcm = self._resampler.resample_chunk(np.frombuffer(pcm, np.int16)).tobytes()
        self._pending += pcm
        while len(self._pending) >= self._window:
            window = bytes(self._pending[: self._window])
            del self._pending[: self._window]
            self._scored += self._window // 2
            # The analyzer's own state machine (start/stop counts, volume floor) is what pipecat users tune;
            # it is driven one window at a time here so that each transition has a time.
            state = self._vad._run_analyzer(window)
            at = self._scored / self._vad_rate
            if not self.speaking and state == VADState.SPEAKING:
                self.speaking = True
                self.started_at = max(0.0, at - self._start_secs)
                out.append(Segment("start", self.started_at))
            elif self.speaking and state == VADState.QUIET:
                self.speaking = False
                ended = max(self.started_at, at - self._stop_secs)
                out.append(Segment("stop", ended, bytes(self._audio), self.started_at))
                self._audio.clear()
        if self.speaking and self._max and len(self._audio) >= self._max:
            out.append(Segment("cut", self.now, bytes(self._audio), self.started_at))
            self._audio.clear()
            self.started_at = self.now
        elif not self.speaking and len(self._audio) > self._keep:
            del self._audio[: len(self._audio) - self._keep]
        return out

    def take(self) -> Segment | None:
        """End the utterance now (Finalize, a manual commit): its audio, and the VAD back to quiet."""
        if not self.speaking:
            return None
        segment = Segment("stop", self.now, bytes(self._audio), self.started_at)
        self._audio.clear()
        self.speaking = False
        self._vad.set_params(self._vad.params)
        return segment

    def utterance(self) -> bytes:
        return bytes(self._audio) if self.speaking else b""


async def feed(segmenter, pcm: bytes) -> list[Segment]:
    """`segmenter.feed(pcm)`, in a thread when it blocks."""
    if segmenter.blocking:
        return await asyncio.to_thread(segmenter.feed, pcm)
    return segmenter.feed(pcm)
