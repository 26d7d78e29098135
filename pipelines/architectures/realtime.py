"""The `realtime` architecture: the caller's audio straight to a speech-to-speech model and its audio straight back.

Turn-taking is the model's own (server VAD): its `speech_started` interrupts the agent and Twilio's buffer is
cleared, so the acknowledgement and minimum-words policy (turns/barge_in.py) is the `pipeline` architecture's; an
uninterruptible welcome keeps the caller's audio from the model until it has been said. Keypad digits reach the
model as a conversation item (turns/keypad.py). The carrier's audio stays μ-law at 8 kHz end to end (see providers/openai_realtime.py). Call controls, the
call's tools and the heard-text accounting are the same as the `pipeline` architecture's.
"""

from __future__ import annotations

from pipecat.frames.frames import LLMMessagesAppendFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.transports.base_transport import BaseTransport
from pipecat.utils.types import NOT_GIVEN

from config.agent import AgentConfig
from pipelines.call_pipeline import CallPipeline
from pipelines.providers import registry
from pipelines.providers.registry import BuildContext
from pipelines.turns.heard import HeardTextGate
from pipelines.turns.keypad import DTMF_PREFIX, KeypadAggregator, KeypadToRealtime
from pipelines.turns.mute import ClosingMuteStrategy, RealtimeWelcomeMute


def welcome_instruction(welcome: str) -> str:
    return f'The call has just connected. Greet the caller by saying exactly: "{welcome}"'


def build(agent: AgentConfig, transport: BaseTransport, ctx: BuildContext) -> CallPipeline:
    llm = registry.build("realtime", agent.realtime, ctx)
    closing_mute = ClosingMuteStrategy()
    context = LLMContext(messages=[], tools=ctx.tools.tools_schema() if ctx.tools else NOT_GIVEN)
    if ctx.tools:
        ctx.tools.register(llm)
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            user_idle_timeout=agent.call.silence_timeout_secs, user_mute_strategies=[closing_mute],
        ),
    )
    dtmf = [KeypadAggregator(prefix=DTMF_PREFIX), KeypadToRealtime(llm)] if agent.call.dtmf else []
    heard = [HeardTextGate(ctx.playout, label=ctx.label)] if ctx.playout is not None else []
    welcome_mute = []
    if agent.welcome_message and not agent.interruption.welcome_interruptible:
        welcome_mute = [RealtimeWelcomeMute(llm)]
    pipeline = Pipeline([transport.input(), *dtmf, aggregators.user(), llm, transport.output(), *welcome_mute,
                         *heard, aggregators.assistant()])
    greeting = []
    if agent.welcome_message:
        greeting = [LLMMessagesAppendFrame(
            messages=[{"role": "user", "content": welcome_instruction(agent.welcome_message)}], run_llm=True)]
    return CallPipeline(
        pipeline=pipeline,
        user_aggregator=aggregators.user(),
        assistant_aggregator=aggregators.assistant(),
        greeting=greeting,
        closing_mute=closing_mute,
        llm=llm,
    )
