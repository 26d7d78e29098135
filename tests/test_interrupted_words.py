"""The caller's words survive the interruption they start (pipelines/turns/user_aggregator.py).

A barge-in can be decided on an interim transcript while the final one for the same words already waits in the user
aggregator's queue behind it (a busy server: the aggregator is behind the STT). Starting the turn interrupts the
agent, and pipecat's interruption empties the aggregator's queue of interruptible frames: the final went with it,
the turn had no words, and it ended only on pipecat's 5 s watchdog, as an empty turn. In the load benchmark at 100
calls that was 20-46 of 300 turns at 5.5-6.5 s (bench/HISTORY.md, session 33).
"""

from __future__ import annotations

import asyncio
import time

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    EndFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair, LLMUserAggregatorParams
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy
from pipecat.turns.user_start.base_user_turn_start_strategy import BaseUserTurnStartStrategy
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from config.agent import AgentConfig, InterruptionConfig, ScriptConfig, ScriptRule
from pipelines.architectures.pipeline import _stop_strategy
from pipelines.providers.scripted import ScriptedLLMService
from pipelines.stt_frames import NothingMoreHeardFrame
from pipelines.turns.barge_in import BargeInStrategy
from pipelines.turns.user_aggregator import aggregator_pair
from tests.pipelines import running
from tests.turn_rules import HeldLine

WORDS = "Where are you located?"
WATCHDOG_SECS = 1.0  # pipecat's user_turn_stop_timeout, 5 s by default


class _Busy(BaseUserTurnStartStrategy):
    """Takes 50 ms over each transcript before the next rule sees it, as a loaded server's aggregator does: the STT's
    next transcript is queued meanwhile."""

    async def process_frame(self, frame) -> ProcessFrameResult:
        if isinstance(frame, (TranscriptionFrame, InterimTranscriptionFrame)):
            await asyncio.sleep(0.05)
        return ProcessFrameResult.CONTINUE


async def _turn(start, *before, voxlines: bool = True) -> list[str]:
    """The user turns' words when an interim transcript starts a turn while its final waits behind it."""
    params = LLMUserAggregatorParams(
        user_turn_strategies=UserTurnStrategies(
            start=[_Busy(), start], stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.05)]),
        user_turn_stop_timeout=WATCHDOG_SECS)
    if voxlines:
        user, assistant = aggregator_pair(LLMContext(), params)
    else:
        pair = LLMContextAggregatorPair(LLMContext(), user_params=params)
        user, assistant = pair.user(), pair.assistant()
    turns: list[str] = []

    @user.event_handler("on_user_turn_stopped")
    async def _stopped(_user, _strategy, message):
        turns.append(message.content)

    worker, _, task = await running(user, assistant)
    await worker.queue_frames([*before, InterimTranscriptionFrame(WORDS, "caller", "t0"),
                               TranscriptionFrame(WORDS, "caller", "t1", finalized=True)])

    async def ended():
        while not turns:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(ended(), WATCHDOG_SECS + 2)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(task, 10)
    return turns


def _barge_in() -> BargeInStrategy:
    return BargeInStrategy(InterruptionConfig(resume_secs=5.0), HeldLine())


# The agent speaking, the caller's voice over it (held), the caller quiet again: the words then decide.
OVER_THE_AGENT = (BotStartedSpeakingFrame(), VADUserStartedSpeakingFrame(), VADUserStoppedSpeakingFrame())


async def test_a_barge_in_decided_on_an_interim_keeps_the_final_words():
    turns = await _turn(_barge_in(), *OVER_THE_AGENT)
    assert turns == [WORDS]


async def test_a_turn_an_interim_starts_keeps_the_final_words():
    """pipecat's own transcript rule (the start rule when barge-in is off) starts the turn on the interim the same
    way."""
    turns = await _turn(TranscriptionUserTurnStartStrategy(enable_interruptions=True))
    assert turns == [WORDS]


async def test_pipecats_aggregator_drops_the_final_words_with_the_interruption():
    """Why the aggregator above keeps them: pipecat's loses the final, and the turn ends empty on its watchdog."""
    turns = await _turn(TranscriptionUserTurnStartStrategy(enable_interruptions=True), voxlines=False)
    assert turns == [""]


async def test_an_interruption_whose_words_the_stt_drops_ends_on_the_silence_and_asks_again():
    """The interim "Where are you" interrupts the agent, and Deepgram's answer to the finalize comes back empty (it
    dropped those words: NothingMoreHeardFrame). The turn has no words; pipecat's stop rule wants words, so it ended
    only on the 5 s watchdog, with the agent cut off and silent all that time. With voxline's rules it ends on the
    silence, and pipecat's empty-turn handling runs the model once with its "ask them to repeat" message, which the
    scripted LLM answers with its fallback, not with another answer to the caller's question before."""
    agent = AgentConfig(name="a", system_prompt="p", transcriber={"provider": "deepgram"}, llm={}, tts={})
    script = ScriptConfig(rules=[ScriptRule(keywords=["hours"], reply="We are open from noon.")])
    stop = _stop_strategy(agent, segmented_stt=False)
    params = LLMUserAggregatorParams(user_turn_strategies=UserTurnStrategies(start=[_barge_in()], stop=[stop]))
    assert params.user_turn_stop_timeout == 5.0 and params.empty_user_turn.interrupted_prompt
    context = LLMContext(messages=[{"role": "system", "content": "p"},
                                   {"role": "user", "content": "What are your hours?"}])
    user, assistant = aggregator_pair(context, params)
    turns: list[tuple[float, str]] = []

    @user.event_handler("on_user_turn_stopped")
    async def _stopped(_user, _strategy, message):
        turns.append((time.monotonic(), message.content))

    worker, _, task = await running(user, ScriptedLLMService(script), assistant)
    await worker.queue_frames([BotStartedSpeakingFrame(), VADUserStartedSpeakingFrame(),
                               InterimTranscriptionFrame("Where are you", "caller", "t0"),
                               VADUserStoppedSpeakingFrame(stop_secs=0.2)])
    stopped = time.monotonic()
    await asyncio.sleep(0.1)
    await worker.queue_frame(NothingMoreHeardFrame())
    while not turns and time.monotonic() - stopped < 6:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(task, 10)
    assert [text for _, text in turns] == [""]
    assert turns[0][0] - stopped < 1.0, "the wordless turn waited for pipecat's watchdog"
    assert context.messages[2:] == [{"role": "developer", "content": params.empty_user_turn.interrupted_prompt},
                                    {"role": "assistant", "content": script.fallback}]
