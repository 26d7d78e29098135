"""A turn ends on silence the VAD has heard (pipelines/turns/heard_silence.py): the silence rules' timers wait for
the VAD to have analyzed the caller's audio up to then, and to hear nothing in it. In a running pipeline with
the real Silero VAD and espeak's "Hello, ..." (a CI run stored "Hello?" as a turn of its own), and on the rule
with the VAD's real states. And on a streaming STT, the turn's end waits for the final of words whose interim is
in."""

from __future__ import annotations

import asyncio
import audioop
import time

from pipecat.audio.vad.vad_analyzer import VADParams, VADState
from pipecat.frames.frames import (
    EndFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    STTMetadataFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMUserAggregatorParams,
)
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_start import VADUserTurnStartStrategy
from pipecat.turns.user_start.base_user_turn_start_strategy import (
    BaseUserTurnStartStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from config.agent import AgentConfig
from pipelines.architectures.pipeline import _stop_strategy, follow_the_caller
from pipelines.providers.vad import SharedSileroVADAnalyzer
from pipelines.stt_frames import NothingMoreHeardFrame
from pipelines.turns import heard_silence
from pipelines.turns.sentence_end import SentenceEndTurnStop
from pipelines.turns.user_aggregator import CallerUserAggregator, aggregator_pair
from tests.pipelines import running
from tests.turn_rules import started

PARAMS = VADParams(confidence=0.7, start_secs=0.1, stop_secs=0.2, min_volume=0.3)  # the agents' defaults
FRAME = 320  # 20 ms of 8 kHz 16-bit audio, as the serializer hands the caller's audio on
SILENCE = bytes(FRAME)
# Silence frames before the words: the words' windows then fall so that Silero stops in the 0.19 s comma pause
# after "Hello" and starts again 0.1 s after the words resume (2 of the 8 ways 20 ms frames and 32 ms windows fall).
LEAD_FRAMES = 22


class _Counts:
    """The user aggregator's counts of the caller's frames, set by the test."""

    def __init__(self, arrived: int = 0, settled: int = 0):
        self.audio_arrived = arrived
        self.audio_settled = settled


def _audio() -> InputAudioRawFrame:
    return InputAudioRawFrame(audio=SILENCE, sample_rate=8000, num_channels=1)


async def _rule(counts: _Counts, vad: SharedSileroVADAnalyzer | None = None
                ) -> tuple[SentenceEndTurnStop, list[float]]:
    """The default sentence rule (0.3 s of silence after a sentence: 0.1 s past the VAD's stop), following `vad`
    and `counts`, on pipecat's real timers and task manager."""
    rule = SentenceEndTurnStop(silence_secs=3.0, sentence_end_secs=0.3, vad_stop_secs=0.2, segmented_stt=True)
    if vad is None:
        vad = SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS)
        vad.set_sample_rate(8000)  # as the pipeline's start does
    rule.follow_hearing(vad, counts)
    return rule, await started(rule)


async def _sentence_then_pause(rule: SentenceEndTurnStop) -> float:
    await rule.process_frame(VADUserStartedSpeakingFrame())
    await rule.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await rule.process_frame(TranscriptionFrame("Hello?", "caller", "now", finalized=True))
    return time.monotonic()


async def _analyzed(rule: SentenceEndTurnStop, counts: _Counts) -> None:
    """One caller frame through the aggregator: the rules see it once the VAD has analyzed it, then it is settled."""
    await rule.process_frame(_audio())
    counts.audio_settled += 1


async def test_a_turn_the_vad_has_heard_the_silence_of_ends_on_the_clock():
    counts = _Counts(arrived=40, settled=40)
    rule, ended = await _rule(counts)
    stopped = await _sentence_then_pause(rule)
    await asyncio.sleep(0.3)
    assert len(ended) == 1 and 0.09 <= ended[0] - stopped < 0.2
    await rule.cleanup()


async def test_a_turn_waits_for_the_callers_audio_still_waiting_for_the_vad():
    counts = _Counts(arrived=40, settled=40)
    rule, ended = await _rule(counts)
    stopped = await _sentence_then_pause(rule)
    counts.audio_arrived += 5  # the VAD fell behind: five frames came that it has not analyzed
    await asyncio.sleep(0.3)
    assert not ended, "the turn ended on the clock with the caller's audio since not yet analyzed"
    counts.audio_arrived += 3  # frames that come after the clock ran out are not waited for
    for _ in range(4):
        await _analyzed(rule, counts)
    assert not ended
    await _analyzed(rule, counts)  # the last of the five that were waiting
    assert len(ended) == 1 and ended[0] - stopped >= 0.3
    await rule.cleanup()


async def test_the_callers_next_words_drop_the_held_end():
    counts = _Counts(arrived=40, settled=40)
    rule, ended = await _rule(counts)
    await _sentence_then_pause(rule)
    counts.audio_arrived += 5
    await asyncio.sleep(0.2)
    for _ in range(3):
        await _analyzed(rule, counts)
    await rule.process_frame(VADUserStartedSpeakingFrame())  # those frames were the caller going on
    for _ in range(2):
        await _analyzed(rule, counts)
    await asyncio.sleep(heard_silence.MAX_HOLD_SECS + 0.2)
    assert not ended, "the caller went on: the turn is not over"
    await rule.cleanup()


async def test_sound_the_vad_is_still_calling_speech_holds_the_end(speech):
    """The VAD calls it speech only after `start_secs` (0.1 s) of it: the caller who goes on just before the
    clock runs out is heard as STARTING when it does."""
    counts = _Counts()
    vad = SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS)
    vad.set_sample_rate(8000)
    rule, ended = await _rule(counts, vad)
    stopped = await _sentence_then_pause(rule)
    words = audioop.ulaw2lin(speech["located"], 2)
    for i in range(0, len(words), FRAME):
        counts.audio_arrived += 1
        if await vad.analyze_audio(words[i:i + FRAME]) == VADState.STARTING:
            break
    else:
        raise AssertionError("the VAD never heard speech starting")
    await rule.process_frame(_audio())
    counts.audio_settled = counts.audio_arrived
    await asyncio.sleep(0.3)
    assert not ended, "the turn ended while the VAD heard the caller's words starting"
    # The sound stops there (a cough, not words): the VAD goes back to quiet, and the next frame ends the turn.
    while await vad.analyze_audio(SILENCE) != VADState.QUIET:
        pass
    counts.audio_arrived += 1
    await _analyzed(rule, counts)
    assert len(ended) == 1 and ended[0] - stopped >= 0.3
    await rule.cleanup()


async def test_the_hold_gives_way_to_the_clock():
    """A caller's stream can stall, and a muted caller's audio is not analyzed: the end waits for the VAD no
    longer than MAX_HOLD_SECS."""
    counts = _Counts(arrived=40, settled=40)
    rule, ended = await _rule(counts)
    stopped = await _sentence_then_pause(rule)
    counts.audio_arrived += 1
    await asyncio.sleep(0.1 + heard_silence.MAX_HOLD_SECS - 0.3)
    assert not ended
    await asyncio.sleep(0.6)
    assert len(ended) == 1 and ended[0] - stopped >= 0.1 + heard_silence.MAX_HOLD_SECS
    await rule.cleanup()


async def _deepgram_rule() -> tuple[SentenceEndTurnStop, list[float]]:
    """The default sentence rule on a streaming STT with Deepgram's p99 latency (0.35 s: pipecat waits 0.15 s past
    the VAD's stop for a final), in a turn. The VAD has heard everything."""
    vad = SharedSileroVADAnalyzer(sample_rate=8000, params=PARAMS)
    vad.set_sample_rate(8000)
    rule = SentenceEndTurnStop(silence_secs=0.7, sentence_end_secs=0.3, vad_stop_secs=0.2, segmented_stt=False)
    rule.follow_hearing(vad, _Counts(arrived=40, settled=40))
    ended = await started(rule)
    await rule.process_frame(STTMetadataFrame(service_name="stt", ttfs_p99_latency=0.35))
    return rule, ended


async def _streaming_rule() -> tuple[SentenceEndTurnStop, list[float]]:
    """`_deepgram_rule` in a turn an interruption started: its words came in while the caller went on to a
    question, whose interim is in."""
    rule, ended = await _deepgram_rule()
    await rule.process_frame(VADUserStartedSpeakingFrame())
    await rule.process_frame(TranscriptionFrame("Wait.", "caller", "t0"))
    await rule.process_frame(InterimTranscriptionFrame("Where are you", "caller", "t1"))
    return rule, ended


async def test_a_turn_waits_for_the_final_of_words_in_flight():
    rule, ended = await _streaming_rule()
    await rule.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    stopped = time.monotonic()
    await asyncio.sleep(0.4)  # past pipecat's STT wait and the sentence rule, on the interruption's "Wait."
    assert not ended, "the turn ended on the caller's earlier words with the question's final on its way"
    await rule.process_frame(TranscriptionFrame("Where are you located?", "caller", "t2"))
    assert len(ended) == 1 and ended[0] - stopped >= 0.4  # the final ends it at once
    await rule.cleanup()


async def test_a_final_that_does_not_end_a_sentence_gets_the_long_silence():
    """The short silence that was up was for the interruption's "Wait."; the question's words, once in, are cut
    off mid-sentence, so the turn runs on to the long silence (0.7 s: 0.5 s past the VAD's stop)."""
    rule, ended = await _streaming_rule()
    await rule.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    stopped = time.monotonic()
    await asyncio.sleep(0.3)
    await rule.process_frame(TranscriptionFrame("Where are you", "caller", "t2"))
    await asyncio.sleep(0.1)
    assert not ended, "the turn ended on words that stop mid-sentence"
    await asyncio.sleep(0.3)
    assert len(ended) == 1 and 0.5 <= ended[0] - stopped < 0.65
    await rule.cleanup()


async def test_a_final_before_the_pause_leaves_nothing_in_flight():
    rule, ended = await _streaming_rule()
    await rule.process_frame(TranscriptionFrame("Where are you located?", "caller", "t2"))
    await rule.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    stopped = time.monotonic()
    await asyncio.sleep(0.3)
    assert len(ended) == 1 and 0.09 <= ended[0] - stopped < 0.25  # on the clock: pipecat's 0.15 s STT wait
    await rule.cleanup()


async def test_words_the_stt_drops_release_the_held_end_at_once():
    """The question's interim is in, and Deepgram's answer to the finalize comes back empty (it dropped those
    words: NothingMoreHeardFrame): the turn ends then, on the words it has, not at the hold's bound."""
    rule, ended = await _streaming_rule()
    await rule.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    stopped = time.monotonic()
    await asyncio.sleep(0.3)
    assert not ended
    await rule.process_frame(NothingMoreHeardFrame())
    assert len(ended) == 1 and ended[0] - stopped < 0.15 + heard_silence.MAX_HOLD_SECS - 0.5
    await rule.cleanup()


async def _wordless_rule() -> tuple[SentenceEndTurnStop, list[float]]:
    """`_deepgram_rule` in a turn whose only words are the interim that started it (a barge-in decided on "Where
    are you"): no final has come."""
    rule, ended = await _deepgram_rule()
    await rule.process_frame(VADUserStartedSpeakingFrame())
    await rule.process_frame(InterimTranscriptionFrame("Where are you", "caller", "t1"))
    return rule, ended


async def test_a_turn_the_stt_made_nothing_of_ends_on_the_silence_not_the_watchdog():
    """Deepgram dropped the interim's words: its answer to the finalize is empty and the turn has no words. pipecat's
    rule wants words, so the turn ended only on its 5 s watchdog; it ends on the long silence (0.5 s past the VAD's
    stop) like a turn with words that do not end a sentence."""
    rule, ended = await _wordless_rule()
    await rule.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    stopped = time.monotonic()
    await asyncio.sleep(0.2)
    await rule.process_frame(NothingMoreHeardFrame())
    await asyncio.sleep(0.15)
    assert not ended, "a wordless turn ended before its silence was up"
    await asyncio.sleep(0.4)
    assert len(ended) == 1 and 0.5 <= ended[0] - stopped < 0.65
    await rule.cleanup()


async def test_a_late_nothing_more_ends_a_wordless_turn_at_once():
    rule, ended = await _wordless_rule()
    await rule.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    stopped = time.monotonic()
    await asyncio.sleep(0.8)
    assert not ended, "a turn with no words and no answer from the STT ended"
    await rule.process_frame(NothingMoreHeardFrame())
    assert len(ended) == 1 and ended[0] - stopped >= 0.8
    await rule.cleanup()


async def test_a_wordless_turn_waits_while_the_caller_speaks_again():
    """The caller goes on after the STT's empty answer: its "nothing" was about the sound before, and the turn
    waits for the new words' final as any turn does."""
    rule, ended = await _wordless_rule()
    await rule.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await rule.process_frame(NothingMoreHeardFrame())
    await rule.process_frame(VADUserStartedSpeakingFrame())
    await asyncio.sleep(0.3)
    await rule.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await asyncio.sleep(0.7)
    assert not ended, "the turn ended on the earlier empty answer, with the caller's new words not in"
    await rule.process_frame(TranscriptionFrame("Where are you located?", "caller", "t2"))
    assert len(ended) == 1
    await rule.cleanup()


async def test_a_wordless_turn_started_in_the_pause_ends_a_silence_after_the_answer():
    """Under load the interim can come after the VAD's stop and start the turn there: no silence timer runs, and
    the STT's empty answer starts one."""
    rule, ended = await _deepgram_rule()
    await rule.handle_user_turn_stopped()  # no turn: the caller speaks and stops with the agent silent
    await rule.process_frame(VADUserStartedSpeakingFrame())
    await rule.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    await rule.process_frame(NothingMoreHeardFrame())  # outside a turn (a cough): nothing to end
    await asyncio.sleep(0.6)
    assert not ended, "the rule ended a turn that had not started"
    await rule.handle_user_turn_started()  # an interim in the pause starts one
    await rule.process_frame(InterimTranscriptionFrame("Where are you", "caller", "t1"))
    await rule.process_frame(NothingMoreHeardFrame())
    answered = time.monotonic()
    await asyncio.sleep(0.7)
    assert len(ended) == 1 and 0.5 <= ended[0] - answered < 0.65
    await rule.cleanup()


async def test_a_final_that_never_comes_holds_the_end_no_longer_than_the_vad_would():
    rule, ended = await _streaming_rule()
    await rule.process_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
    stopped = time.monotonic()
    await asyncio.sleep(0.15 + heard_silence.MAX_HOLD_SECS - 0.2)
    assert not ended
    await asyncio.sleep(0.5)
    assert len(ended) == 1 and ended[0] - stopped >= 0.15 + heard_silence.MAX_HOLD_SECS
    await rule.cleanup()


class _StallingVAD(SharedSileroVADAnalyzer):
    """The call's VAD, whose next analysis stalls `stall` s when asked (`stall_next`): its thread held up, as by
    Whisper's run or another call's burst on the same two cores."""

    stall = 0.0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        if self.stall:
            stall, self.stall = self.stall, 0.0
            await asyncio.sleep(stall)
        return await super().analyze_audio(buffer)


class _Whisper(BaseUserTurnStartStrategy):
    """Whisper's transcripts, as they reach the user aggregator after each of the VAD's stops: "Hello?" after the
    comma's pause, the rest after the sentence's end. The VAD stalls right after the first is in."""

    def __init__(self, user: list, vad: _StallingVAD, heard: list[str]):
        super().__init__()
        self._user, self._vad, self.heard = user, vad, heard
        self._texts = ["Hello?", "I would like to book a table for two people tonight."]

    async def process_frame(self, frame) -> ProcessFrameResult:
        if isinstance(frame, VADUserStoppedSpeakingFrame) and self._texts:
            await self._user[0].queue_frame(TranscriptionFrame(self._texts.pop(0), "caller", "now", finalized=True))
        elif isinstance(frame, TranscriptionFrame):
            self.heard.append(frame.text)
            if frame.text == "Hello?":
                self._vad.stall = 0.25
        return ProcessFrameResult.CONTINUE


async def test_a_pause_at_a_comma_does_not_end_the_turn_while_the_vad_is_held_up(speech):
    """The CI failure, on a busy server: the caller pauses 0.19 s at the comma, Whisper writes "Hello?" (a
    finished sentence: the turn may end 0.1 s past the VAD's stop), and the VAD's next analysis is held up 0.25 s.
    The clock runs out with the caller's next words waiting to be analyzed; pipecat's rule ended the turn on
    "Hello?" there. The caller's whole sentence is one turn."""
    user: list = []
    heard: list[str] = []
    vad = _StallingVAD(sample_rate=8000, params=PARAMS)
    agent = AgentConfig(name="a", system_prompt="p", transcriber={"provider": "whisper"}, llm={}, tts={})
    stop = _stop_strategy(agent, segmented_stt=True)
    params = LLMUserAggregatorParams(vad_analyzer=vad, user_turn_strategies=UserTurnStrategies(
        start=[_Whisper(user, vad, heard), VADUserTurnStartStrategy()], stop=[stop]))
    context = LLMContext()
    aggregator, assistant = aggregator_pair(context, params)
    assert isinstance(aggregator, CallerUserAggregator)
    user.append(aggregator)
    follow_the_caller(stop, vad, aggregator, assistant)
    turns: list[tuple[float, str]] = []

    @aggregator.event_handler("on_user_turn_stopped")
    async def _stopped(_aggregator, _strategy, message):
        turns.append((time.monotonic(), message.content))

    worker, _, task = await running(aggregator, assistant)
    line = SILENCE * LEAD_FRAMES + audioop.ulaw2lin(speech["table"], 2) + SILENCE * 60
    next_at = time.monotonic()
    for i in range(0, len(line), FRAME):  # in real time, as Twilio sends it
        await worker.queue_frame(InputAudioRawFrame(audio=line[i:i + FRAME], sample_rate=8000, num_channels=1))
        next_at += 0.02
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.sleep(0.3)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(task, 10)
    assert heard[:1] == ["Hello?"], "the VAD did not stop at the comma: the test's audio no longer tests the rule"
    assert aggregator.audio_arrived == aggregator.audio_settled == -(-len(line) // FRAME)
    assert [text for _, text in turns] == ["Hello? I would like to book a table for two people tonight."], turns
