"""A TTS's word timestamps matched to its text without recounting the sentence at every word.

pipecat 1.14 follows each sentence the TTS speaks with a `WordCompletionTracker`, which places every word the
provider times (Cartesia's word timestamps) in the sentence, so the transcript and the LLM context keep what
was said. Two things there cost time on the event loop for every word, growing with the sentence:
- `TextSegment.is_transformed` is a property, computed again at every read: it reduces both sides of the segment
  (for an unchanged sentence, the whole sentence twice) to their letters and digits, and it is read several
  times per word;
- `alnum_only` reduces a text one character at a time through `unicodedata.normalize`, and the map asks it,
  through `has_alnum`, whether anything speakable is left in the rest of the sentence at every word.

And each sentence's map starts by lining up the text the TTS was given with the text a client displays, word by
word with `difflib`, though the two are the same text unless something rewrote it.

A 24-word sentence took ~170 µs of CPU per word, a 53-word one ~320 µs, and ~130 / ~450 µs more to start
(`bench/tts_words.py`: 37 µs a word at either length now); in a load run the TTS's audio-context task, where
this runs, was ~9 % of the server's event loop.

Here two equal texts are one equal piece without asking `difflib`; `is_transformed` is kept once computed (the
segment is a frozen dataclass: its answer cannot change); and `alnum_only` and `has_alnum` take a fast road for
text that is ASCII once its markup is stripped, where folding accents is a no-op and `isalnum` is `[A-Za-z0-9]`;
any other text goes through pipecat's own functions. The answers are pipecat's, character for character
(`tests/test_tts_words.py` compares them). Tied to the names pipecat 1.14's `text_segment_map` and
`word_completion_tracker` import from `alnum_utils`, rebound here when this module is imported (with the
module's `difflib`), and to `TextSegment.is_transformed`; pinned like the other seams.
"""

from __future__ import annotations

import difflib
import functools
import re
import types

from pipecat.utils.context import text_segment_map, word_completion_tracker
from pipecat.utils.text import alnum_utils
from pipecat.utils.text.markup_utils import strip_complete_markup

_NOT_ALNUM_ASCII = re.compile(r"[^A-Za-z0-9]+")
_ALNUM_ASCII = re.compile(r"[A-Za-z0-9]")

pipecats_alnum_only = alnum_utils.alnum_only
pipecats_has_alnum = alnum_utils.has_alnum
pipecats_is_transformed = text_segment_map.TextSegment.is_transformed


def alnum_only(text: str) -> str:
    stripped = strip_complete_markup(text)
    if stripped.isascii():
        return _NOT_ALNUM_ASCII.sub("", stripped).lower()
    return pipecats_alnum_only(text)


def has_alnum(text: str) -> bool:
    stripped = strip_complete_markup(text)
    if stripped.isascii():
        return _ALNUM_ASCII.search(stripped) is not None
    # alnum_only keeps exactly one character for every alphanumeric one
    return any(ch.isalnum() for ch in stripped)


class SameTextsMatcher(difflib.SequenceMatcher):
    """difflib's matcher, answering at once for two equal sequences: one piece, all equal. That is a sentence no
    transform, filter or tag rewrote for the TTS (nearly every one), which difflib otherwise lines up word by word
    (~130 µs for 24 words, ~450 µs for 53)."""

    def get_opcodes(self):
        if self.a == self.b:
            return [("equal", 0, len(self.a), 0, len(self.b))] if self.a else []
        return super().get_opcodes()


def _cached_is_transformed() -> functools.cached_property:
    kept = functools.cached_property(pipecats_is_transformed.fget)
    kept.__set_name__(text_segment_map.TextSegment, "is_transformed")
    return kept


def install() -> None:
    """Idempotent; done when this module is imported."""
    text_segment_map.difflib = types.SimpleNamespace(SequenceMatcher=SameTextsMatcher)
    text_segment_map.alnum_only = alnum_only
    text_segment_map.has_alnum = has_alnum
    word_completion_tracker.alnum_only = alnum_only
    if not isinstance(text_segment_map.TextSegment.__dict__["is_transformed"], functools.cached_property):
        text_segment_map.TextSegment.is_transformed = _cached_is_transformed()


install()
