"""The event loop's CPU for a TTS's word timestamps, per word: pipecat's `WordCompletionTracker`, built for a
sentence and fed the words the TTS times in it, as pipecat 1.14's TTS service does for every sentence it speaks
(Cartesia's word timestamps), with pipecat's own matching and with voxline's (pipelines/providers/tts_words.py).
CPU microseconds per word (process time, the tracker's start included), median of rounds.

    .venv/bin/python bench/tts_words.py [--sentences 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipecat.utils.context import text_segment_map, word_completion_tracker  # noqa: E402
from pipecat.utils.context.word_completion_tracker import WordCompletionTracker  # noqa: E402

from pipelines.providers import tts_words  # noqa: E402

REPLY = ("We are at twelve Main Street, next to the old cinema, and we are open every day from noon until ten "
         "in the evening.")
LONG = (REPLY + " If you would like to book a table for tonight, I can take your name and the number of guests now, "
        "and we will hold it for fifteen minutes.")


@contextlib.contextmanager
def pipecats():
    names = [(text_segment_map, "difflib", difflib), (text_segment_map, "alnum_only", tts_words.pipecats_alnum_only),
             (text_segment_map, "has_alnum", tts_words.pipecats_has_alnum),
             (word_completion_tracker, "alnum_only", tts_words.pipecats_alnum_only),
             (text_segment_map.TextSegment, "is_transformed", tts_words.pipecats_is_transformed)]
    kept = [(owner, name, owner.__dict__[name]) for owner, name, _ in names]
    for owner, name, value in names:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in kept:
            setattr(owner, name, value)


def per_word(sentence: str, sentences: int) -> float:
    # As the provider reports them: words without the spaces, punctuation attached.
    words = sentence.split()
    start = time.process_time()
    for _ in range(sentences):
        tracker = WordCompletionTracker(sentence, llm_text=sentence)
        for word in words:
            tracker.add_word_and_check_complete(word)
            tracker.get_word_for_frame()
            tracker.get_llm_consumed()
    return (time.process_time() - start) / sentences / len(words) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for sentence in (REPLY, LONG):
        theirs, ours = [], []
        for _ in range(args.rounds):
            with pipecats():
                theirs.append(per_word(sentence, args.sentences))
            ours.append(per_word(sentence, args.sentences))
        print(f"{len(sentence.split())} words: {statistics.median(theirs):.1f} µs a word with pipecat's matching, "
              f"{statistics.median(ours):.1f} µs with voxline's")


if __name__ == "__main__":
    main()
