"""Whisper on a window as long as the utterance (pipelines/providers/whisper_window.py) against its fixed 30 s
window: word error rate and time per utterance, on the phrases, voices and speeds of bench/whisper_tail.py, each cut
by the call's VAD and given to Whisper exactly as the STT gives it (near-silent tail left out, pipecat's trailing
silence after). Prints both rates, the median and p95 time of a transcription, how many short-window decodes fell
back to the full window, and (with --show) every utterance whose words differ.

    .venv/bin/python bench/whisper_window.py                      # 24 phrases × 3 voices × 3 speeds
    .venv/bin/python bench/whisper_window.py --noise-dbfs -55     # a noisy line
    .venv/bin/python bench/whisper_window.py --pad-secs 3         # another pad after the utterance
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from whisper_tail import RATE, add_line_arguments, edits, lines, segments, words  # noqa: E402

import pipelines.providers.whisper as whisper_module  # noqa: E402
from pipelines.providers import whisper_window  # noqa: E402
from pipelines.providers.whisper import LocalWhisperSTTService, without_quiet_tail  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_line_arguments(ap)
    ap.add_argument("--pad-secs", type=float, default=whisper_window.PAD_SECS)
    ap.add_argument("--show", action="store_true", help="print every utterance whose words differ")
    args = ap.parse_args()
    whisper_window.PAD_SECS = args.pad_secs
    full, short = LocalWhisperSTTService(short_window=False), LocalWhisperSTTService()
    for stt in (full, short):
        stt._sample_rate = RATE  # as its StartFrame would set it
    silence = full._trailing_silence()
    fallbacks = [0]

    def counting(*a, **kw):  # the STT's own call, counted
        text = whisper_window.transcribe_short(*a, **kw)
        fallbacks[0] += text is None
        return text

    whisper_module.transcribe_short = counting
    ref_words, errors, times, runs = 0, {"full": 0, "short": 0}, {"full": [], "short": []}, 0
    full._transcribe(silence + silence)  # loads the model outside the timings
    for voice, speed, text, pcm in lines(args):
        given = [without_quiet_tail(s, RATE) + silence for s in asyncio.run(segments(pcm))]
        ref = words(text)
        ref_words += len(ref)
        heard = {}
        for name, stt in (("full", full), ("short", short)):
            parts = []
            for segment in given:
                started = time.perf_counter()
                parts.append(stt._transcribe(segment))
                times[name].append(time.perf_counter() - started)
            heard[name] = " ".join(parts)
            errors[name] += edits(ref, words(heard[name]))
        runs += len(given)
        if args.show and words(heard["full"]) != words(heard["short"]):
            print(f"  {voice} {speed} {text!r}: full window {heard['full']!r}, short {heard['short']!r}")
    print(f"{len(times['full'])} transcriptions, {ref_words} words, line noise {args.noise_dbfs} dBFS, pad "
          f"{args.pad_secs} s")
    for name in ("full", "short"):
        ms = np.array(times[name]) * 1000
        print(f"  {name:5} window: word error rate {errors[name] / ref_words:.3f}, time p50 {np.median(ms):.0f} ms, "
              f"p95 {np.percentile(ms, 95):.0f} ms")
    print(f"  short-window decodes done again on the full window: {fallbacks[0]} of {runs}")


if __name__ == "__main__":
    main()
