"""The sentence-end turn rule (pipelines/turns/sentence_end.py): which transcripts end a sentence, and the turn
ending after the short silence for those and the long one for the rest, on pipecat's real timers and task manager.
The silences here are far apart (0.3 s against 3 s) so that a loaded machine cannot blur them."""

from __future__ import annotations

import asyncio
import time

import pytest
from pipecat.audio.turn.base_turn_analyzer import BaseTurnAnalyzer, BaseTurnParams, EndOfTurnState
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    STTMetadataFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)

from config.agent import AgentConfig
from pipelines.architectures.pipeline import _stop_strategy
from pipelines.providers.vad import SharedSileroVADAnalyzer
from pipelines.turns.after_pause import MAX_LEVEL_LEAD_SECS, PauseTimedTurnStop
from pipelines.turns.late_transcript import SmartTurnStop
from pipelines.turns.sentence_end import SentenceEndTurnStop, ends_sentence
from tests.turn_rules import started


# What tiny.en wrote for espeak phrases over an 8 kHz line (complete, then cut off mid-sentence).
@pytest.mark.parametrize(("text", "ends"), [
    ("Where are you located?", True),
    ("Yes.", True),
    ("Tell me I'm out your opening hour.", True),
    ("Stop!", True),
    ('He said "bye."', True),
    ("I need help with my...", False),  # Whisper's mark for trailing off
    ("So, basically what happened was…", False),
    ("I would like to come or cut table for.", False),  # a full stop after a word no sentence ends with
    ("My account number is 4 5 7.", False),  # numbers are read in chunks
    ("They order number in 1, 2, 3, 4.", False),
    ("wait where in my head my sleep", False),  # a doubtful decode comes back unpunctuated
    ("", False),
    ("?", False),
])
def test_which_transcripts_end_a_sentence(text, ends):
    assert ends_sentence(text) is ends


def test_agents_get_the_rule_unless_it_is_off_or_no_shorter():
    def agent(**turn) -> AgentConfig:
        return AgentConfig(name="a", system_prompt="p", transcriber={"provider": "whisper"}, llm={}, tts={},
                           turn=turn)

    def strategy(segmented_stt: bool = True, **turn):
        built = _stop_strategy(agent(**turn), segmented_stt=segmented_stt)
        assert built._segmented is segmented_stt  # each rule knows whether the STT's transcripts come late
        return type(built)

    assert strategy() is SentenceEndTurnStop  # on by default: 0.3 s against 0.7 s
    assert strategy(segmented_stt=False) is SentenceEndTurnStop
    assert strategy(sentence_end_secs=None) is PauseTimedTurnStop
    assert strategy(silence_secs=0.3, sentence_end_secs=0.5) is PauseTimedTurnStop
    assert strategy(segmented_stt=False, sentence_end_secs=None) is PauseTimedTurnStop
    assert strategy(strategy="smart_turn") is SmartTurnStop


class _EveryPauseEndsTheTurn(BaseTurnAnalyzer):
    """A turn analyzer whose verdict at every pause is "complete": what the smart-turn model decides is not what is
    tested here, only what the rule around it does with transcripts."""

    @property
    def speech_triggered(self) -> bool:
        return False

    @property
    def params(self) -> BaseTurnParams:
        return BaseTurnParams()

    def append_audio(self, buffer: bytes, is_speech: bool) -> EndOfTurnState:
        return EndOfTurnState.INCOMPLETE

    async def analyze_end_of_turn(self):
        return EndOfTurnState.COMPLETE, None

    def clear(self):
        pass


async def _strategy(segmented_stt: bool = True, silence_secs: float = 3.0, rule: str = "sentence_end",
                    sentence_end_secs: float = 0.3) -> tuple[SentenceEndTurnStop, list[float]]:
    if rule == "sentence_end":
        strategy = SentenceEndTurnStop(silence_secs=silence_secs, sentence_end_secs=sentence_end_secs,
                                       vad_stop_secs=0.2, segmented_stt=segmented_stt)
    elif rule == "silence":  # `sentence_end_secs: null`
        strategy = PauseTimedTurnStop(user_speech_timeout=silence_secs - 0.2, segmented_stt=segmented_stt)
    else:
        strategy = SmartTurnStop(turn_analyzer=_EveryPauseEndsTheTurn(), segmented_stt=segmented_stt)
    return strategy, await started(strategy)


async def _speak_then_pause(strategy: SentenceEndTurnStop) -> float:
    await strategy.process_frame(VADUserStartedSpeakingFrame())
    await strategy.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    return time.monotonic()


async def test_a_finished_sentence_ends_the_turn_after_the_short_silence():
    strategy, ended = await _strategy()
    stopped = await _speak_then_pause(strategy)
    await strategy.process_frame(TranscriptionFrame("Where are you located?", "caller", "now"))
    assert not ended  # 0.1 s past the VAD's stop is not over yet
    await asyncio.sleep(0.6)
    assert ended and ended[0] - stopped < 1.0, "the turn should end 0.1 s after the VAD's stop, not 2.8 s"
    await strategy.cleanup()


async def test_a_transcript_that_comes_late_ends_the_turn_on_arrival():
    strategy, ended = await _strategy()
    await _speak_then_pause(strategy)
    await asyncio.sleep(0.4)  # the STT took longer than the short silence
    assert not ended  # no words yet: never before the transcript
    await strategy.process_frame(TranscriptionFrame("Yes.", "caller", "now"))
    await asyncio.sleep(0)
    assert len(ended) == 1
    await strategy.cleanup()


async def test_an_unfinished_sentence_waits_for_the_long_silence():
    strategy, ended = await _strategy()
    stopped = await _speak_then_pause(strategy)
    await strategy.process_frame(TranscriptionFrame("I need help with my...", "caller", "now"))
    await asyncio.sleep(1.5)
    assert not ended
    await asyncio.sleep(2.0)
    assert ended and ended[0] - stopped >= 2.7  # silence_secs minus the VAD's stop_secs
    await strategy.cleanup()


@pytest.mark.parametrize("rule", ["sentence_end", "silence", "smart_turn"])
async def test_a_late_transcript_does_not_end_the_turn_before_the_words_after_it(rule):
    """Whisper's (finalized) transcript of the first words comes once the caller has gone on. At the next pause the
    turn still waits for the STT's transcript of what followed (up to its p99 latency), not only for the silence
    or the smart-turn verdict: a CI run stored "Hello?" as the caller's turn and "I would like ... a table ..." as
    a second one, because the new words took 0.54 s against a 0.5 s silence timer. Every rule an agent can choose
    waits."""
    strategy, ended = await _strategy(silence_secs=0.4, rule=rule)  # a 0.2 s timer after the VAD's stop
    await strategy.process_frame(STTMetadataFrame(service_name="whisper", ttfs_p99_latency=1.0))
    await _speak_then_pause(strategy)
    await strategy.process_frame(VADUserStartedSpeakingFrame())  # went on
    await strategy.process_frame(TranscriptionFrame("Hello?", "caller", "now", finalized=True))
    await strategy.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await asyncio.sleep(0.4)
    assert not ended, "the turn ended on the first words while the STT was still on the rest"
    await strategy.process_frame(TranscriptionFrame(" I would like a table for two.", "caller", "now",
                                                    finalized=True))
    await asyncio.sleep(0)
    assert len(ended) == 1
    await strategy.cleanup()


async def test_a_streaming_stt_sentence_that_came_before_the_vads_stop_counts():
    """Deepgram sends the words as they are said: its final often beats the VAD's stop."""
    strategy, ended = await _strategy(segmented_stt=False)
    await strategy.process_frame(VADUserStartedSpeakingFrame())
    await strategy.process_frame(TranscriptionFrame("Where are you located?", "caller", "now"))
    stopped = time.monotonic()
    await strategy.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await asyncio.sleep(0.6)
    assert ended and ended[0] - stopped < 1.0
    await strategy.cleanup()


async def test_words_from_before_the_caller_went_on_do_not_count():
    """Whisper's transcript of a finished sentence comes only once the caller has gone on (it transcribes after a
    pause), then the caller pauses after words that do not end one: the long silence applies."""
    strategy, ended = await _strategy()
    await _speak_then_pause(strategy)
    await strategy.process_frame(VADUserStartedSpeakingFrame())  # went on before the short silence was over
    await strategy.process_frame(TranscriptionFrame("Where are you located?", "caller", "now"))
    await strategy.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await strategy.process_frame(TranscriptionFrame(" I mean the", "caller", "now"))
    await asyncio.sleep(1.0)
    assert not ended, "the latest words do not end a sentence: the long silence applies"
    await strategy.cleanup()


async def test_a_streaming_finals_late_sentence_does_not_cut_off_the_words_after_it():
    """Deepgram's final for "Where are you located?" comes once the caller has gone on; at the next pause the new
    words' own final has not come yet, so the short silence starts. Those words, when they come, do not end a
    sentence: the long silence applies again and the caller is not cut off."""
    strategy, ended = await _strategy(segmented_stt=False)
    await _speak_then_pause(strategy)
    await strategy.process_frame(VADUserStartedSpeakingFrame())  # went on
    await strategy.process_frame(TranscriptionFrame("Where are you located?", "caller", "now"))  # late final
    stopped = time.monotonic()
    await strategy.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await strategy.process_frame(TranscriptionFrame("and do you have", "caller", "now"))  # within the short silence
    await asyncio.sleep(1.0)
    assert not ended, "the latest words do not end a sentence: the long silence applies"
    await asyncio.sleep(2.2)
    assert ended and ended[0] - stopped >= 2.7
    await strategy.cleanup()


async def test_a_sentence_finished_after_an_unfinished_one_still_shortens():
    strategy, ended = await _strategy(segmented_stt=False)
    await strategy.process_frame(VADUserStartedSpeakingFrame())
    await strategy.process_frame(TranscriptionFrame("I need a table for", "caller", "now"))
    stopped = time.monotonic()
    await strategy.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await strategy.process_frame(TranscriptionFrame("two, please.", "caller", "now"))
    await asyncio.sleep(0.6)
    assert ended and ended[0] - stopped < 1.0
    await strategy.cleanup()


class _Replies:
    """The two events of pipecat's assistant aggregator that `follow_replies` listens to, fired by the test."""

    def __init__(self):
        self._handlers: dict[str, list] = {}

    def add_event_handler(self, name: str, handler) -> None:
        self._handlers.setdefault(name, []).append(handler)

    def fire(self, name: str) -> None:
        for handler in self._handlers[name]:
            handler(self)


async def _interrupted_after_the_pause(strategy: PauseTimedTurnStop, text: str, whisper_secs: float = 0.05) -> float:
    """The caller spoke over the agent and went quiet; Whisper's transcript came after the VAD's stop and barge-in
    started the turn on it (pipecat resets the stop rule at a turn's start, then hands it the same transcript)."""
    stopped = await _speak_then_pause(strategy)
    await strategy.handle_user_turn_stopped()  # the turn before (the one the agent is answering) had ended...
    await strategy.process_frame(VADUserStartedSpeakingFrame())  # ...and the caller spoke over the answer
    stopped = await _speak_then_pause(strategy)
    await asyncio.sleep(whisper_secs)
    await strategy.handle_user_turn_started()
    await strategy.process_frame(TranscriptionFrame(text, "caller", "now", finalized=True))
    return stopped


async def test_a_sentence_that_interrupts_after_the_pause_ends_the_turn_after_the_short_silence():
    """pipecat times the silence from the transcript when the turn starts after the VAD's stop (2.8 s here): the
    question asked over the agent waited that much longer than the same question asked in silence."""
    strategy, ended = await _strategy()
    stopped = await _interrupted_after_the_pause(strategy, "Where are you located?")
    await asyncio.sleep(0.6)
    assert ended and ended[0] - stopped < 1.0, "the turn should end 0.1 s after the VAD's stop, not 2.8 s after"
    await strategy.cleanup()


@pytest.mark.parametrize("rule", ["sentence_end", "silence"])
async def test_an_unfinished_interruption_after_the_pause_waits_for_the_long_silence_from_the_stop(rule):
    strategy, ended = await _strategy(rule=rule)
    stopped = await _interrupted_after_the_pause(strategy, "Wait, I need a table for", whisper_secs=0.6)
    await asyncio.sleep(1.0)
    assert not ended
    await asyncio.sleep(2.0)
    assert ended and 2.7 <= ended[0] - stopped < 3.2  # from the VAD's stop, not 2.8 s after the transcript
    await strategy.cleanup()


async def test_a_turn_started_after_the_pause_waits_for_the_interrupted_reply_to_be_stored():
    """The interrupted reply goes into the context (and the call's transcript) when pipecat's interruption reaches
    the assistant aggregator, after the turn's start: the caller's words must come after it."""
    strategy, ended = await _strategy()
    replies = _Replies()
    strategy.follow_replies(replies)
    replies.fire("on_assistant_turn_started")
    stopped = await _interrupted_after_the_pause(strategy, "Where are you located?")
    await asyncio.sleep(0.6)
    assert not ended, "the turn ended while the reply it interrupted was not stored yet"
    replies.fire("on_assistant_turn_stopped")
    stored = time.monotonic()
    await asyncio.sleep(0.05)
    assert len(ended) == 1 and ended[0] >= stored and ended[0] - stopped < 1.0
    await strategy.cleanup()


@pytest.mark.parametrize("rule", ["sentence_end", "silence"])
async def test_a_transcript_that_starts_a_turn_after_one_ended_keeps_pipecats_wait(rule):
    """Keypad digits come as transcripts with no voice: after the caller's last turn ended, they start a turn of
    their own, and its silence is timed from them, not from the old pause."""
    strategy, ended = await _strategy(rule=rule)
    await _speak_then_pause(strategy)
    await strategy.handle_user_turn_stopped()
    await asyncio.sleep(0.3)
    await strategy.handle_user_turn_started()
    digits = time.monotonic()
    await strategy.process_frame(TranscriptionFrame("4 5 7.", "caller", "now", finalized=True))
    await asyncio.sleep(2.0)
    assert not ended
    await asyncio.sleep(1.2)
    assert ended and ended[0] - digits >= 2.7
    await strategy.cleanup()


async def _pause_on_a_line_that_fell_silent(strategy: PauseTimedTurnStop, before_reckoning: float) -> float:
    """Speech, then the VAD's stop, on a line that fell near-silent `before_reckoning` s before the VAD's reckoning
    of the silence (its stop less `stop_secs`): Silero heard the pause that much after the line's level did."""
    vad = SharedSileroVADAnalyzer(sample_rate=8000, params=VADParams(stop_secs=0.2))
    strategy.follow_level(vad)
    assert vad.track_quiet, "the VAD is asked to follow the line's level"
    await strategy.process_frame(VADUserStartedSpeakingFrame())
    vad.quiet_since = time.monotonic() - 0.2 - before_reckoning
    await strategy.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    return time.monotonic()


@pytest.mark.parametrize("before", [0.12, 0.5])
async def test_a_sentences_silence_counts_from_when_the_line_fell_silent(before):
    """1.2 s of silence (1.0 s after the VAD's stop) counted from the line's fall instead: 0.12 s less, and at most
    MAX_LEVEL_LEAD_SECS less when the level fell long before (that is not Silero's lag). A late timer still ends
    it before the 1.0 s it took when the silence counted from the stop."""
    strategy, ended = await _strategy(sentence_end_secs=1.2)
    stopped = await _pause_on_a_line_that_fell_silent(strategy, before)
    await strategy.process_frame(TranscriptionFrame("Where are you located?", "caller", "now"))
    await asyncio.sleep(1.2)
    expected = 1.0 - min(before, MAX_LEVEL_LEAD_SECS)
    assert ended and expected - 0.02 <= ended[0] - stopped < 0.99, (ended[0] - stopped, expected)
    await strategy.cleanup()


@pytest.mark.parametrize("rule", ["sentence_end", "silence"])
async def test_the_long_silence_counts_from_when_the_line_fell_silent(rule):
    strategy, ended = await _strategy(rule=rule)
    stopped = await _pause_on_a_line_that_fell_silent(strategy, 0.12)
    await strategy.process_frame(TranscriptionFrame("I need help with my...", "caller", "now"))
    await asyncio.sleep(2.5)
    assert not ended
    await asyncio.sleep(0.6)
    assert ended and 2.66 <= ended[0] - stopped < 2.79, ended[0] - stopped  # 2.8 s after the stop, less 0.12 s
    await strategy.cleanup()


async def test_a_pause_after_the_caller_spoke_again_is_not_given_the_old_lead():
    strategy, ended = await _strategy(sentence_end_secs=1.2)
    await _pause_on_a_line_that_fell_silent(strategy, 0.12)
    vad = strategy._vad
    await strategy.process_frame(VADUserStartedSpeakingFrame())  # the caller goes on; a noisy pause this time
    vad.quiet_since = None
    await strategy.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    stopped = time.monotonic()
    await strategy.process_frame(TranscriptionFrame("Where are you located?", "caller", "now"))
    await asyncio.sleep(1.2)
    assert ended and 0.98 <= ended[0] - stopped < 1.09, ended[0] - stopped
    await strategy.cleanup()
