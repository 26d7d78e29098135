"""What leaving a segment's near-silent tail out of Whisper's input does to its transcripts (pipelines/providers/
whisper.py `without_quiet_tail`). Each phrase is spoken by espeak-ng (voices × speeds), put on an 8 kHz μ-law line
with a second of silence either side (and white noise at `--noise-dbfs`, if given), cut into segments by the call's
VAD, and each segment transcribed twice by the bundled tiny.en: as the VAD's stop hands it over, and without its
near-silent tail. Prints both word error rates against the phrase (digits read as words, punctuation and case
ignored) and every phrase whose transcripts differ.

    .venv/bin/python bench/whisper_tail.py                      # 24 phrases × 3 voices × 3 speeds
    .venv/bin/python bench/whisper_tail.py --noise-dbfs -55     # a noisy line: nothing is left out
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadgen import synthesize  # noqa: E402
from pipecat.audio.vad.vad_analyzer import VADParams, VADState  # noqa: E402

from config.agent import VADConfig  # noqa: E402
from pipelines.providers.vad import SharedSileroVADAnalyzer  # noqa: E402
from pipelines.providers.whisper import LocalWhisperSTTService, without_quiet_tail  # noqa: E402

PHRASES = [
    "Wait, where is that exactly?", "Where are you located?", "Goodbye.",
    "Hello, I would like to book a table for two people tonight.", "Uh huh.", "Please stop.",
    "What are your opening hours?", "Do you have vegetarian pizza?", "Yes.", "No, thank you.",
    "Can I book a table for four people at eight?", "That's all, thanks.", "What is on the menu?", "Is it far?",
    "Tomorrow at seven.", "Six people.", "Thanks.", "Sure, sounds good.", "I want pasta.", "Yes please.", "Okay.",
    "Wait.", "It's great.", "Not that one.",
]
DIGITS = dict(zip("0123456789", ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
                  strict=True))
RATE = 8000


def words(text: str) -> list[str]:
    return [DIGITS.get(w, w) for w in re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()]


def edits(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[:], i
        for j, h in enumerate(hyp, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return row[-1]


async def segments(pcm: bytes) -> list[bytes]:
    """The segments the STT is handed: from 1 s before the VAD's start (its pre-roll) to the VAD's stop."""
    d = VADConfig()
    vad = SharedSileroVADAnalyzer(sample_rate=RATE, params=VADParams(
        confidence=d.confidence, start_secs=d.start_secs, stop_secs=d.stop_secs, min_volume=d.min_volume))
    vad.set_sample_rate(RATE)
    out, start, before = [], None, VADState.QUIET
    for i in range(0, len(pcm), 640):
        state = await vad.analyze_audio(pcm[i:i + 640])
        if state == VADState.SPEAKING and start is None:
            start = max(0, i - 2 * RATE)
        if state == VADState.QUIET and before != VADState.QUIET and start is not None:
            out.append(pcm[start:i + 640])
            start = None
        before = state
    return out


def add_line_arguments(ap: argparse.ArgumentParser) -> None:
    """The utterances' options, shared with bench/whisper_window.py."""
    ap.add_argument("--voices", default="en,en-us,en+f3")
    ap.add_argument("--speeds", default="140,165,190")
    ap.add_argument("--phrases", type=int, default=len(PHRASES), help="the first N phrases")
    ap.add_argument("--noise-dbfs", type=float, default=None)


def lines(args: argparse.Namespace) -> Iterator[tuple[str, str, str, bytes]]:
    """(voice, speed, phrase, the line) for every phrase × voice × speed: the phrase spoken by espeak-ng on an 8 kHz
    μ-law line, as 16-bit PCM, with 1 s of silence either side (and white noise at `noise_dbfs`, if given)."""
    rng = np.random.default_rng(0)
    for voice in args.voices.split(","):
        for speed in args.speeds.split(","):
            for text in PHRASES[:args.phrases]:
                spoken = synthesize(text, voice=voice, speed=int(speed)).ulaw
                pcm = bytes(2 * RATE) + audioop.ulaw2lin(spoken, 2) + bytes(2 * RATE)
                if args.noise_dbfs is not None:
                    line = np.frombuffer(pcm, np.int16) + rng.standard_normal(len(pcm) // 2) * 32768 * 10 ** (
                        args.noise_dbfs / 20)
                    pcm = np.clip(line, -32768, 32767).astype(np.int16).tobytes()
                yield voice, speed, text, pcm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_line_arguments(ap)
    args = ap.parse_args()
    stt = LocalWhisperSTTService()
    stt._sample_rate = RATE  # as its StartFrame would set it
    silence = stt._trailing_silence()
    ref_words = errors_as_is = errors_trimmed = utterances = differing = 0
    for voice, speed, text, pcm in lines(args):
        cut = asyncio.run(segments(pcm))
        as_is = " ".join(stt._transcribe(s + silence) for s in cut)
        trimmed = " ".join(stt._transcribe(without_quiet_tail(s, RATE) + silence) for s in cut)
        ref = words(text)
        ref_words += len(ref)
        utterances += 1
        errors_as_is += edits(ref, words(as_is))
        errors_trimmed += edits(ref, words(trimmed))
        if words(as_is) != words(trimmed):
            differing += 1
            print(f"  {voice} {speed} {text!r}: as handed over {as_is!r}, without the tail {trimmed!r}")
    print(f"{utterances} utterances, {ref_words} words, line noise {args.noise_dbfs} dBFS: word error rate "
          f"{errors_as_is / ref_words:.3f} as the VAD hands segments over, {errors_trimmed / ref_words:.3f} without "
          f"their near-silent tails; {differing} utterances' words differ")


if __name__ == "__main__":
    main()
