"""A TTS's word timestamps are matched to its text with pipecat's answers, word for word, without recounting the
sentence at every word (pipelines/providers/tts_words.py): each replacement is compared with pipecat's own
function, and whole sentences are followed word by word with and without them."""

from __future__ import annotations

import difflib
import inspect

import pytest
from pipecat.utils.context import text_segment_map, word_completion_tracker
from pipecat.utils.context.text_segment_map import TextSegment, TextSegmentMap
from pipecat.utils.context.word_completion_tracker import WordCompletionTracker

import pipelines.architectures.pipeline  # noqa: F401  (the architecture that speaks through a TTS installs it)
from pipelines.providers import tts_words

TEXTS = [
    "",
    " ",
    "We are at twelve Main Street, next to the old cinema, and we are open every day from noon until ten.",
    "Your balance is $42.50!",
    "It's 5 < 10, isn't it? <3",
    "I love to count <spell>1234</spell>.",
    "Say <phoneme alphabet=\"ipa\" ph=\"ʃɪˈvɔːn\">Siobhan</phoneme> twice",
    "an unclosed <break tag and more",
    "Café au lait, naïve jalapeño — “quoted” ‘single’ – dash",
    "İstanbul ǅ ﬁne Σίσυφος straße",
    "東京へようこそ 안녕하세요 123 ٣٤٥",
    "emoji 🙂 and ½ ² Ⅻ",
    "\t tabs\nand\u00a0no-break spaces ",
    "<break time=\"300ms\"/>",
    "!!!",
]


@pytest.mark.parametrize("text", TEXTS)
def test_alnum_only_and_has_alnum_answer_as_pipecats(text):
    assert tts_words.alnum_only(text) == tts_words.pipecats_alnum_only(text)
    assert tts_words.has_alnum(text) is tts_words.pipecats_has_alnum(text)
    for cut in range(len(text)):  # the map asks about what is left of a sentence
        assert tts_words.alnum_only(text[cut:]) == tts_words.pipecats_alnum_only(text[cut:])
        assert tts_words.has_alnum(text[cut:]) is tts_words.pipecats_has_alnum(text[cut:])


@pytest.mark.parametrize("a, b", [
    ([""], [""]),
    ([], []),
    (["Your", " ", "balance"], ["Your", " ", "balance"]),
    (["Your", " ", "balance", " ", "is", " ", "$42.50"], ["Your", " ", "balance", " ", "is", " ", "forty", " ", "two"]),
    ([], ["a"]),
    (["a", " ", "b"], ["b", " ", "a"]),
])
def test_the_matcher_gives_difflibs_pieces(a, b):
    ours = tts_words.SameTextsMatcher(None, a, b, autojunk=False).get_opcodes()
    assert ours == difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()


def _pipecats(monkeypatch) -> None:
    monkeypatch.setattr(text_segment_map, "difflib", difflib)
    monkeypatch.setattr(text_segment_map, "alnum_only", tts_words.pipecats_alnum_only)
    monkeypatch.setattr(text_segment_map, "has_alnum", tts_words.pipecats_has_alnum)
    monkeypatch.setattr(word_completion_tracker, "alnum_only", tts_words.pipecats_alnum_only)
    monkeypatch.setattr(TextSegment, "is_transformed", tts_words.pipecats_is_transformed)


def _follow(tts_text: str, words: list[str], llm_text: str | None, user_facing: str | None) -> list:
    tracker = WordCompletionTracker(tts_text, llm_text=llm_text, user_facing_text=user_facing)
    seen = [[(s.original, s.tts, s.original_start, s.original_end, s.is_transformed)
             for s in tracker._segment_map._segments]]
    for word in words:
        done = tracker.add_word_and_check_complete(word)
        seen.append((word, done, tracker.get_word_for_frame(), tracker.get_overflow_word(),
                     tracker.get_llm_consumed(), tracker.get_accumulated_user_facing_text(),
                     tracker.get_remaining_user_facing_text(), tracker.get_accumulated_tts_text(),
                     tracker.get_accumulated_llm_text(), tracker.get_remaining_tts_text(),
                     tracker.get_remaining_llm_text(), tracker.is_complete))
    return seen


SENTENCES = [
    # (what the TTS was given, the words it timed, the LLM's text, what a client displays)
    ("We are at twelve Main Street, next to the old cinema.",
     ["We", "are", "at", "twelve", "Main", "Street,", "next", "to", "the", "old", "cinema."], None, None),
    ("We are at twelve Main Street, next to the old cinema.",  # words dropped, and punctuation reported apart
     ["We", "at", "twelve", "Main", "Street", ",", "cinema", "."], None, None),
    ("Your balance is forty two dollars.", ["Your", "balance", "is", "forty", "two", "dollars."],
     "Your balance is $42.50.", "Your balance is $42.50."),
    ("I love to count <spell>1234</spell>.", ["I", "love", "to", "count", "1234."], None, None),
    ("Café au lait, naïve jalapeño — “quoted”.", ["Cafe", "au", "lait,", "naive", "jalapeno", "-", "\"quoted\"."],
     None, None),
    ("Sure, 1111And then", ["Sure,", "1111And", "then"], None, None),  # a word merged across the boundary
    ("Tell me about Paris.", ["Something", "else", "entirely"], None, None),  # nothing matches: force-completed
    ("東京へようこそ, welcome.", ["東京へようこそ,", "welcome."], None, None),
]


@pytest.mark.parametrize("tts_text, words, llm_text, user_facing", SENTENCES)
def test_a_sentence_is_followed_word_by_word_as_pipecat_follows_it(tts_text, words, llm_text, user_facing,
                                                                   monkeypatch):
    ours = _follow(tts_text, words, llm_text, user_facing)
    with monkeypatch.context() as m:
        _pipecats(m)
        theirs = _follow(tts_text, words, llm_text, user_facing)
    assert ours == theirs
    assert ours[-1][1] in (True, False)  # each step's answers were compared, not only the start


def test_a_segments_answer_is_kept_once_computed():
    segment = TextSegment(original="Your balance is $42.50", tts="Your balance is forty two dollars",
                          original_start=0, original_end=22)
    assert segment.is_transformed is True
    assert segment.__dict__["is_transformed"] is True
    plain = TextSegment(original="Hello there", tts="Hello there", original_start=0, original_end=11)
    assert plain.is_transformed is False


def test_pipecat_looks_the_replaced_names_up_where_they_are_rebound():
    # text_segment_map and word_completion_tracker call these by their module-level names: if pipecat moved them,
    # the replacements would be names nobody calls and this fails.
    assert text_segment_map.alnum_only is tts_words.alnum_only
    assert text_segment_map.has_alnum is tts_words.has_alnum
    assert word_completion_tracker.alnum_only is tts_words.alnum_only
    assert text_segment_map.difflib.SequenceMatcher is tts_words.SameTextsMatcher
    assert "difflib.SequenceMatcher(" in inspect.getsource(TextSegmentMap._build_segments)
    assert "alnum_only(" in inspect.getsource(TextSegment.is_transformed.func)
    assert "has_alnum(" in inspect.getsource(TextSegmentMap)
    assert "alnum_only(" in inspect.getsource(WordCompletionTracker)
