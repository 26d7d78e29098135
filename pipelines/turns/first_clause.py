"""Speak the first clause of a reply as soon as it is written, not the whole first sentence.

pipecat hands the TTS whole sentences, so the caller hears nothing until the first sentence is complete and
synthesized: "We are at twelve Main Street, next to the old cinema, and we are open every day until ten." costs
~170 ms in Piper before its first sample, its first clause ~35 ms. The rest of the reply goes sentence by sentence
as before, synthesized while the first clause plays. A clause must have `min_words` words, so a lone "Well," or
"Sure," waits for its sentence (too short a chunk sounds clipped), and "1,000" is no clause (no space follows).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

CLAUSE_MARKS = ",;:—"


class FirstClauseTextAggregator(SimpleTextAggregator):
    def __init__(self, *, min_words: int = 3, **kwargs):
        super().__init__(**kwargs)
        self._min_words = min_words
        self._first = True  # nothing of this reply said yet

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        if not self._first or self._aggregation_type == TextType.TOKEN:
            async for aggregation in super().aggregate(text):
                self._first = False
                yield aggregation
            return
        for i, char in enumerate(text):
            if char.isspace() and self._text[-1:] in CLAUSE_MARKS and len(self._text.split()) >= self._min_words:
                clause = self._text.strip()
                self._text = ""
                self._first = False
                yield Aggregation(text=clause, type=TextType.SENTENCE)
                async for aggregation in super().aggregate(text[i:]):
                    yield aggregation
                return
            self._text += char
            if (sentence := await self._check_sentence_with_lookahead(char)) is not None:
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


def speak_first_clause_early(tts) -> None:
    """Swap a pipecat TTS service's sentence aggregator for the one above (pipecat 1.14's `_text_aggregator`);
    services that stream tokens (no sentence aggregation) are left alone."""
    current = getattr(tts, "_text_aggregator", None)
    if type(current) is SimpleTextAggregator and current._aggregation_type == TextType.SENTENCE:
        tts._text_aggregator = FirstClauseTextAggregator(aggregation_type=current._aggregation_type,
                                                         language=current.language)
