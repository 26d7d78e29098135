"""voxline's provider emulators with their models made cheap, for load runs on a small machine.

    .venv/bin/python bench/fast_providers.py deepgram|openai|cartesia --port P [--latency-ms L] [--rules FILE]

The emulators (`pipelines/providers/emulators/`) speak each provider's real wire protocol, but do real work behind
it: the Deepgram one runs Silero on every window of every stream and Whisper on every utterance, the Cartesia one
runs Piper on every sentence. At 10 calls that was most of a core taken from the server under test on a 2-core
machine, and it grows with the calls, so the load benchmark would measure the emulators. Here the same emulator
code runs (same protocol, same messages, same `--latency-ms`), with three swaps:

- utterances are cut by loudness (20 ms RMS blocks; the caller's speech is synthesized, its silence is digital)
  instead of Silero, with the same start/stop timings the emulator asks for;
- every utterance is transcribed as `--transcript` (the benchmark's caller says known lines), punctuated as
  Deepgram punctuates it when asked (pipecat's Deepgram service asks); the emulator strips the punctuation when a
  client does not ask. Until this round the line had no punctuation, which no punctuating Deepgram returns, so
  voxline's sentence-end turn rule never fired in the cloud rows;
- Piper's output is cached per (sentence, rate): the first synthesis of a sentence is real (once, however many
  calls ask for it meanwhile), repeats are the same bytes at once, like a provider with zero latency. With
  `--audio-cache DIR` the bytes are also kept in DIR, and a host without Piper replays them.
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audio_cache import cached_audio  # noqa: E402
import harness_loop  # noqa: E402

from pipelines.providers import emulators, local_models  # noqa: E402
from pipelines.providers.emulators import audio  # noqa: E402

LOUD_RMS = 300.0
BLOCK_SECS = 0.02


class LoudnessSegmenter:
    """`audio.Segmenter`'s interface (feed/take/utterance, now/speaking/started_at) on 20 ms RMS blocks."""

    blocking = False  # an RMS a block: fed on the emulator's loop, not through a thread

    def __init__(self, rate: int, *, threshold: float = 0.5, start_secs: float = 0.2, stop_secs: float = 0.5,
                 preroll_secs: float = 0.3, min_volume: float = 0.4, max_secs: float | None = None):
        self.rate = rate
        self._block = int(rate * BLOCK_SECS) * 2
        self._start_blocks = max(1, round(start_secs / BLOCK_SECS))
        self._stop_blocks = max(1, round(stop_secs / BLOCK_SECS))
        self._start_secs, self._stop_secs = start_secs, stop_secs
        self._keep = int((preroll_secs + start_secs + 0.1) * rate) * 2
        self._max = int(max_secs * rate) * 2 if max_secs else None
        self._pending = bytearray()
        self._audio = bytearray()
        self._run = 0  # consecutive loud blocks (quiet) or quiet blocks (speaking)
        self._scored = 0
        self.received = 0
        self.speaking = False
        self.started_at = 0.0

    @property
    def now(self) -> float:
        return self.received / self.rate

    def feed(self, pcm: bytes) -> list[audio.Segment]:
        out: list[audio.Segment] = []
        self._audio += pcm
        self.received += len(pcm) // 2
        self._pending += pcm
        while len(self._pending) >= self._block:
            block = bytes(self._pending[: self._block])
            del self._pending[: self._block]
            self._scored += self._block // 2
            at = self._scored / self.rate
            loud = audioop.rms(block, 2) > LOUD_RMS
            if not self.speaking:
                self._run = self._run + 1 if loud else 0
                if self._run >= self._start_blocks:
                    self.speaking, self._run = True, 0
                    self.started_at = max(0.0, at - self._start_secs)
                    out.append(audio.Segment("start", self.started_at))
            else:
                self._run = 0 if loud else self._run + 1
                if self._run >= self._stop_blocks:
                    self.speaking, self._run = False, 0
                    ended = max(self.started_at, at - self._stop_secs)
                    out.append(audio.Segment("stop", ended, bytes(self._audio), self.started_at))
                    self._audio.clear()
        if self.speaking and self._max and len(self._audio) >= self._max:
            out.append(audio.Segment("cut", self.now, bytes(self._audio), self.started_at))
            self._audio.clear()
            self.started_at = self.now
        elif not self.speaking and len(self._audio) > self._keep:
            del self._audio[: len(self._audio) - self._keep]
        return out

    def take(self) -> audio.Segment | None:
        if not self.speaking:
            return None
        segment = audio.Segment("stop", self.now, bytes(self._audio), self.started_at)
        self._audio.clear()
        self.speaking, self._run = False, 0
        return segment

    def utterance(self) -> bytes:
        return bytes(self._audio) if self.speaking else b""


def patch(transcript: str, audio_cache: Path | None = None) -> None:
    audio.Segmenter = LoudnessSegmenter
    audio.transcribe = lambda pcm, rate: transcript if len(pcm) >= rate // 5 else ""
    piper = audio.synthesize
    audio.synthesize = synthesize = functools.lru_cache(maxsize=512)(
        lambda text, rate: cached_audio(audio_cache, f"piper|{rate}|{text}", lambda: piper(text, rate)))
    run_inference = local_models.run_inference
    made: dict[tuple, asyncio.Future] = {}

    async def run_once(fn, *args):
        """A sentence is synthesized once however many calls ask for it at the same time, and once made it comes
        back at once: otherwise 80 calls meeting a new sentence together queued 80 Piper runs on the emulator's two
        threads, and every call's cached sentences waited behind them (a zero-latency provider has no such queue)."""
        if fn is not synthesize:
            return await run_inference(fn, *args)
        future = made.get(args)
        if future is None or (future.done() and (future.cancelled() or future.exception() is not None)):
            future = made[args] = asyncio.ensure_future(run_inference(fn, *args))
        return await asyncio.shield(future)  # a caller cancelled (a barge-in) leaves it to the others

    local_models.run_inference = run_once


async def serve(provider: str, port: int, latency_ms: int, rules: Path | None, audio_cache: Path | None,
                token_ms: int = 0) -> None:
    # With an audio cache, Piper loads only if a sentence is not in it (a host without Piper replays a cache).
    if provider in ("cartesia", "openai-realtime") and audio_cache is None:
        await local_models.load("piper")
    parsed = emulators.Rules.load(rules) if rules else None
    running = await emulators.start(provider, host="127.0.0.1", port=port, rules=parsed, latency_ms=latency_ms,
                                    token_ms=token_ms)
    print(f"{provider} emulator (fast models) listening on {running.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await running.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("provider", choices=("deepgram", "openai", "cartesia"))
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency-ms", type=int, default=0)
    ap.add_argument("--token-ms", type=int, default=0, help="openai: between a streamed reply's chunks")
    ap.add_argument("--rules", type=Path)
    ap.add_argument("--transcript", default="Where are you located?")
    ap.add_argument("--audio-cache", type=Path, help="Piper's sentences kept here as bytes (bench/audio_cache.py)")
    args = ap.parse_args()
    patch(args.transcript, args.audio_cache)
    try:
        harness_loop.run(serve(args.provider, args.port, args.latency_ms, args.rules, args.audio_cache, args.token_ms))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
