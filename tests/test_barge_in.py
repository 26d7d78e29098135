"""Barge-in policy: acknowledgements never interrupt, real words do, and the context keeps what was heard."""

from __future__ import annotations

import asyncio
import time

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    EndFrame,
    InterruptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregatorParams
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from config.agent import InterruptionConfig
from pipelines.stt_frames import NothingMoreHeardFrame
from pipelines.turns.barge_in import HOLD_LIMIT_SECS, BargeInStrategy, Policy, Verdict
from pipelines.turns.user_aggregator import aggregator_pair
from tests.calls import dial
from tests.conftest import LONG_WELCOME_NUMBER, SMART_TURN_NUMBER
from tests.pipelines import running
from tests.turn_rules import HeldLine

WELCOME_END = "a set menu for groups of six or more people."


@pytest.mark.parametrize("said, verdict", [
    ("Uh-huh.", Verdict.ACKNOWLEDGE),
    ("Okay, yeah. Right.", Verdict.ACKNOWLEDGE),
    ("mm-hmm", Verdict.ACKNOWLEDGE),
    ("", Verdict.UNDECIDED),
    ("...", Verdict.UNDECIDED),
    ("Where are you located?", Verdict.INTERRUPT),
    ("Okay, where are you?", Verdict.INTERRUPT),
    ("Okay stop", Verdict.INTERRUPT),
    ("Hold on.", Verdict.INTERRUPT),
])
def test_policy_with_defaults(said, verdict):
    assert Policy(InterruptionConfig()).verdict(said) is verdict


def test_policy_min_words_and_always_phrases():
    policy = Policy(InterruptionConfig(min_words=3, always_phrases=["wait"]))
    assert policy.verdict("Where is it") is Verdict.INTERRUPT
    assert policy.verdict("Okay where is") is Verdict.UNDECIDED  # two words besides the acknowledgement
    assert policy.verdict("Wait.") is Verdict.INTERRUPT
    assert policy.verdict("waiting") is Verdict.UNDECIDED  # whole words only


async def _talk_over_welcome(server, phrase: bytes):
    caller = await dial(server, LONG_WELCOME_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        await asyncio.sleep(4.0)  # into the welcome's second sentence
        spoke_at = await caller.say(phrase)
        # Either way the agent speaks again: the rest of its welcome, or its answer to the interruption.
        assert await caller.wait_agent_audio(spoke_at + 0.2, 20.0), "the agent stayed silent"
        await caller.wait_agent_quiet(1.0, 40.0)
    server.wait_ended(call_id)
    return caller, spoke_at, server.turns(call_id)


async def test_an_acknowledgement_over_the_agent_does_not_interrupt_it(server, speech):
    caller, spoke_at, turns = await _talk_over_welcome(server, speech["ack"])
    # The agent went quiet while the caller spoke (a clear), then carried on where it stopped.
    assert len(caller.events("clear")) == 1
    assert [t for t in caller.media_times if t > spoke_at + 0.5], "the agent did not carry on"
    assert [t["role"] for t in turns] == ["assistant"], [dict(t) for t in turns]
    assert not turns[0]["interrupted"]
    assert turns[0]["text"].endswith(WELCOME_END), turns[0]["text"]
    assert caller.events("mark") and set(caller.marks_echoed) >= {e.message["mark"]["name"] for e in caller.events("mark")}


async def test_stop_over_the_agent_interrupts_it(server, speech):
    caller, spoke_at, turns = await _talk_over_welcome(server, speech["stop"])
    assert len(caller.events("clear")) == 1
    assert turns[0]["role"] == "assistant" and turns[0]["interrupted"], [dict(t) for t in turns]
    assert not turns[0]["text"].endswith(WELCOME_END)
    assert any(t["role"] == "user" and "stop" in t["text"].lower() for t in turns)
    # The caller's words got an answer (the agent's fallback), which was not interrupted.
    assert turns[-1]["role"] == "assistant" and not turns[-1]["interrupted"] and "again" in turns[-1]["text"]


async def test_smart_turn_ends_the_callers_turn(server, speech):
    caller = await dial(server, SMART_TURN_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        assert await caller.wait_agent_quiet(0.5, 20.0)
        spoke_at = await caller.say(speech["located"])
        replied = await caller.wait_agent_audio(spoke_at, 20.0)
        assert replied is not None, "no reply: the turn never ended"
        await caller.wait_agent_quiet(0.8, 30.0)
    server.wait_ended(call_id)
    assert any("Main Street" in t["text"] for t in server.turns(call_id))
    # The smart-turn model ran on the shared session (loaded once) and decided the turn.
    log = server.log()
    assert "End of Turn result" in log
    assert log.count("loading local model 'smart_turn'") == 1


async def _held_strategy(*, quiet: bool = True, hold_limit_secs: float = HOLD_LIMIT_SECS, **cfg):
    """The agent speaking, the caller's voice over it (the audio held), then (`quiet`) the caller quiet again."""
    line = HeldLine()
    strategy = BargeInStrategy(InterruptionConfig(resume_secs=0.2, **cfg), line, hold_limit_secs=hold_limit_secs)
    started = []

    async def on_started(_strategy, params):
        started.append(params)

    strategy.add_event_handler("on_user_turn_started", on_started)
    await strategy.process_frame(BotStartedSpeakingFrame())
    await strategy.process_frame(VADUserStartedSpeakingFrame())
    assert line.holding
    if quiet:
        await strategy.process_frame(VADUserStoppedSpeakingFrame())
    return strategy, line, started


async def test_a_transcript_still_on_its_way_decides_before_the_agent_resumes():
    strategy, line, started = await _held_strategy(transcript_wait_secs=2.0)
    await asyncio.sleep(0.6)  # past resume_secs: a slow STT has not answered yet
    assert line.holding and not line.resumed and not started
    await strategy.process_frame(TranscriptionFrame("Please wait.", "caller", "now"))
    assert started and not line.resumed  # interrupted once, never resumed in between
    await asyncio.sleep(0.3)
    assert line.resumed == 0
    await strategy.cleanup()


async def test_noise_the_stt_makes_nothing_of_resumes_after_the_bounded_wait():
    strategy, line, started = await _held_strategy(transcript_wait_secs=0.3)
    await asyncio.sleep(0.35)
    assert line.holding and not line.resumed
    await asyncio.sleep(0.4)  # resume_secs + transcript_wait_secs have passed with no transcript
    assert line.resumed == 1 and not line.holding and not started
    await strategy.cleanup()


async def test_noise_the_stt_says_it_made_nothing_of_resumes_without_the_wait():
    """Deepgram's empty answer to the finalize at the VAD's stop (NothingMoreHeardFrame): no transcript is coming,
    so the agent carries on after `resume_secs` (0.2 s), not `transcript_wait_secs` (2 s) later, whether the
    answer comes before resume_secs is up or while the rule waits past it."""
    for answer_after in (0.05, 0.4):
        strategy, line, started = await _held_strategy(transcript_wait_secs=2.0)
        quiet_at = time.monotonic()
        await asyncio.sleep(answer_after)
        await strategy.process_frame(NothingMoreHeardFrame())
        await asyncio.sleep(max(0.05, 0.3 - answer_after))
        assert line.resumed == 1 and not line.holding and not started, answer_after
        assert time.monotonic() - quiet_at < 1.0
        await strategy.cleanup()


async def test_the_stts_nothing_more_reaches_the_rules_through_the_aggregator_and_goes_no_further():
    """Through voxline's user aggregator, as in a call: the frame gets to the barge-in rule (the agent carries on
    after `resume_secs`, 2 s before the transcript wait would end), and nothing downstream sees it."""
    line = HeldLine()
    params = LLMUserAggregatorParams(user_turn_strategies=UserTurnStrategies(
        start=[BargeInStrategy(InterruptionConfig(resume_secs=0.2, transcript_wait_secs=2.0), line)]))
    user, assistant = aggregator_pair(LLMContext(), params)
    seen: list[type] = []

    class Types(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            seen.append(type(frame))
            await self.push_frame(frame, direction)

    worker, _, task = await running(user, Types(), assistant)
    await worker.queue_frames([BotStartedSpeakingFrame(), VADUserStartedSpeakingFrame()])
    await asyncio.sleep(0.05)
    assert line.holding
    quiet_at = time.monotonic()
    await worker.queue_frames([VADUserStoppedSpeakingFrame(), NothingMoreHeardFrame()])
    while line.holding and time.monotonic() - quiet_at < 3.0:
        await asyncio.sleep(0.01)
    assert line.resumed == 1 and time.monotonic() - quiet_at < 1.0
    assert VADUserStoppedSpeakingFrame in seen and NothingMoreHeardFrame not in seen
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(task, 10)


async def _resumed_after_an_acknowledgement(**cfg):
    """The agent held, the caller's "Uh-huh." final in: the agent carries on. Returns what `_held_strategy` does,
    and the list the strategy's aggregation resets are appended to."""
    strategy, line, started = await _held_strategy(**cfg)
    resets = []

    async def on_reset(_strategy):
        resets.append(True)

    strategy.add_event_handler("on_reset_aggregation", on_reset)
    await strategy.process_frame(TranscriptionFrame("Uh-huh.", "caller", "now"))
    assert line.resumed == 1 and not line.holding and not started and len(resets) == 1
    return strategy, line, started, resets


async def test_the_second_final_of_an_acknowledgement_does_not_interrupt_the_agent():
    """A streaming STT can send "Uh-huh, okay." as two finals: the first lets the agent carry on, and the second,
    with no voice before it, used to take the floor as keypad digits do."""
    strategy, line, started, resets = await _resumed_after_an_acknowledgement()
    await strategy.process_frame(TranscriptionFrame("Okay.", "caller", "now"))
    assert not started and line.resumed == 1
    assert len(resets) == 2  # dropped from the caller's side of the context, as the first was
    await strategy.cleanup()


async def test_late_words_that_would_interrupt_take_the_floor():
    strategy, line, started, resets = await _resumed_after_an_acknowledgement()
    await strategy.process_frame(TranscriptionFrame("What about parking?", "caller", "now"))
    assert len(started) == 1 and len(resets) == 1
    await strategy.cleanup()


async def test_keypad_digits_over_the_agent_take_the_floor_whatever_min_words():
    strategy, line, started, resets = await _resumed_after_an_acknowledgement(min_words=5)
    await strategy.process_frame(TranscriptionFrame("DTMF: 2#", "caller", "now"))
    assert len(started) == 1
    await strategy.cleanup()


async def test_the_callers_voice_within_their_own_turn_does_not_hold_the_agent():
    """Found at 100 calls: the caller's words interrupt the agent and start their turn; the agent's speaking flag is
    still set (BotStoppedSpeakingFrame comes back late under load) when the caller, within that turn, speaks again.
    A hold taken then was never ended: pipecat starts no second turn, so no interruption reached the carrier, and
    the agent's next reply waited behind the hold until the output's 10 s write deadline ended the call. Through
    voxline's aggregator and pipecat's turn controller, with the carrier dropping what it held on an interruption
    as the Twilio serializer does."""
    line = HeldLine()
    params = LLMUserAggregatorParams(user_turn_strategies=UserTurnStrategies(
        start=[BargeInStrategy(InterruptionConfig(resume_secs=0.2, transcript_wait_secs=0.2), line)]))
    user, assistant = aggregator_pair(LLMContext(), params)
    interruptions = []

    class Carrier(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, InterruptionFrame):
                interruptions.append(frame)
                line.holding = False  # the serializer's drop(): what was held is thrown away
            await self.push_frame(frame, direction)

    async def settled(predicate) -> bool:
        for _ in range(100):
            if predicate():
                return True
            await asyncio.sleep(0.01)
        return predicate()

    worker, _, task = await running(user, Carrier(), assistant)
    try:
        await worker.queue_frames([BotStartedSpeakingFrame(), VADUserStartedSpeakingFrame()])
        assert await settled(lambda: line.holding)
        await worker.queue_frame(TranscriptionFrame("Where are you located?", "caller", "now"))
        assert await settled(lambda: interruptions and not line.holding)  # the caller's turn has started
        # Still within that turn, with no BotStoppedSpeakingFrame yet: the caller pauses and speaks on.
        await worker.queue_frames([VADUserStoppedSpeakingFrame(), VADUserStartedSpeakingFrame()])
        await worker.queue_frame(TranscriptionFrame("Where are you located?", "caller", "now"))
        await asyncio.sleep(0.6)  # past resume_secs + transcript_wait_secs: a hold would still be there
        assert not line.holding and line.resumed == 0
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(task, 10)


async def test_a_hold_ends_within_its_limit_whatever_the_stt_says():
    """The carrier's output waits while the agent is held, and pipecat's output ends the call once a write has
    waited 10 s. A caller still speaking at the limit (nothing the STT made words of: a provider that stopped
    answering, a noisy room) has the floor; one who has gone quiet, with the STT's answer still awaited, hears the
    agent carry on."""
    strategy, line, started = await _held_strategy(quiet=False, transcript_wait_secs=10.0, hold_limit_secs=0.3)
    await asyncio.sleep(0.2)
    assert line.holding and not started
    await asyncio.sleep(0.2)
    assert len(started) == 1 and line.resumed == 0  # still speaking: an interruption (which drops the held audio)

    line.holding = False
    await strategy.handle_user_turn_stopped()
    await strategy.process_frame(VADUserStartedSpeakingFrame())
    assert line.holding
    await strategy.process_frame(VADUserStoppedSpeakingFrame())  # quiet; the transcript wait would run 10 s
    await asyncio.sleep(0.4)
    assert line.resumed == 1 and not line.holding and len(started) == 1
    await strategy.cleanup()
