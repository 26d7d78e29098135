"""Speak the first clause of a reply as soon as it is written, not the whole first sentence.

pipecat hands the TTS whole sentences, so the caller hears nothing until the first sentence is complete and
synthesized: "We are at twelve Main Street, next to the old cinema, and we are open every day until ten." costs
~170 ms in Piper before its first sample, its first clause ~35 ms. A cloud TTS waits for the LLM instead: the
first sentence is ~26 tokens, its first clause 7, and at a real model's 50-100 tokens a second the rest of the
sentence is 0.2-0.4 s the caller would otherwise spend in silence. The rest of the reply goes sentence by sentence
as before, synthesized while the first clause plays (Cartesia continues one context across them). A clause must
have `min_words` words, so a lone "Well," or "Sure," waits for its sentence (too short a chunk sounds clipped), and
"1,000" is no clause (no space follows).

pipecat 1.14 gives most TTS services its plain sentence aggregator, and Cartesia (and Rime) one that never ends a
sentence inside a `<spell>…</spell>` tag; each gets the first-clause version of its own, and a clause never ends
inside a tag either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pipecat.utils.string import parse_start_end_tags
from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator
from pipecat.utils.text.skip_tags_aggregator import SkipTagsAggregator

CLAUSE_MARKS = ",;:—"


class _FirstClause:
    """The first-clause rule over one of pipecat's sentence aggregators (a mixin placed before it)."""

    def __init__(self, *args, min_words: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self._min_words = min_words
        self._first = True  # nothing of this reply said yet

    def _in_tag(self) -> bool:
        """Whether the text so far ends inside a tag (no clause or sentence may end there)."""
        return False

    def _took(self) -> None:
        """`self._text` has grown by a character."""

    async def _sentence(self, char: str) -> Aggregation | None:
        return await self._check_sentence_with_lookahead(char)

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        if not self._first or self._aggregation_type == TextType.TOKEN:
            async for aggregation in super().aggregate(text):
                self._first = False
                yield aggregation
            return
        for i, char in enumerate(text):
            if (char.isspace() and self._text[-1:] in CLAUSE_MARKS and not self._in_tag()
                    and len(self._text.split()) >= self._min_words):
                clause = self._text.strip()
                await self.reset()  # the buffer and any tag state start again after the clause
                self._first = False
                yield Aggregation(text=clause, type=TextType.SENTENCE)
                async for aggregation in super().aggregate(text[i:]):
                    yield aggregation
                return
            self._text += char
            self._took()
            if self._in_tag():
                continue
            if (sentence := await self._sentence(char)) is not None:
                self._first = False
                yield sentence
                async for aggregation in super().aggregate(text[i + 1:]):
                    yield aggregation
                return

    async def flush(self) -> Aggregation | None:
        self._first = True  # the reply is over; the next one starts afresh
        return await super().flush()

    async def handle_interruption(self):
        self._first = True
        await super().handle_interruption()

    async def reset(self):
        self._first = True
        await super().reset()


class FirstClauseTextAggregator(_FirstClause, SimpleTextAggregator):
    """pipecat's SimpleTextAggregator, the first clause of each reply alone."""


class FirstClauseSkipTagsAggregator(_FirstClause, SkipTagsAggregator):
    """pipecat's SkipTagsAggregator (Cartesia's, Rime's), the first clause of each reply alone; as there, nothing
    ends between a start tag and its end tag, nor at punctuation inside a closed one."""

    def _in_tag(self) -> bool:
        return self._current_tag is not None

    def _took(self) -> None:
        self._current_tag, self._current_tag_index = parse_start_end_tags(
            self._text, self._tags, self._current_tag, self._current_tag_index)

    async def _sentence(self, char: str) -> Aggregation | None:
        sentence = await self._check_sentence_with_lookahead(char, protected_end=self._closed_tags_offset())
        if sentence is not None:
            self._current_tag_index = 0  # the buffer was trimmed: rescan it for tags, as SkipTagsAggregator does
        return sentence


def speak_first_clause_early(tts) -> None:
    """Swap a pipecat TTS service's sentence aggregator for its first-clause version above (pipecat 1.14's
    `_text_aggregator`); services that stream tokens (no sentence aggregation) are left alone."""
    current = getattr(tts, "_text_aggregator", None)
    if getattr(current, "_aggregation_type", None) != TextType.SENTENCE:
        return
    if type(current) is SimpleTextAggregator:
        tts._text_aggregator = FirstClauseTextAggregator(aggregation_type=current._aggregation_type,
                                                         language=current.language)
    elif type(current) is SkipTagsAggregator:
        tts._text_aggregator = FirstClauseSkipTagsAggregator(current._tags, aggregation_type=current._aggregation_type,
                                                             language=current.language)
