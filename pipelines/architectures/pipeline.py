"""The `pipeline` architecture: Silero VAD → STT → LLM (with context aggregation) → TTS, all at the line rate."""

from __future__ import annotations

from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import LLMFullResponseEndFrame, LLMFullResponseStartFrame, LLMTextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregatorParams
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_mute import MuteUntilFirstBotCompleteUserMuteStrategy
from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy, VADUserTurnStartStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.utils.types import NOT_GIVEN

from config.agent import AgentConfig
from pipelines.call_pipeline import LINE_SAMPLE_RATE, CallPipeline
from pipelines.providers import registry
from pipelines.providers.registry import BuildContext
from pipelines.providers.tts_contexts import read_inline
from pipelines.providers.tts_pacing import pace_to_output
from pipelines.providers.tts_progress import drop_word_progress
from pipelines.providers import tts_words  # noqa: F401  (its import rebinds pipecat's word matching)
from pipelines.providers.vad import SharedSileroVADAnalyzer
from pipelines.providers.whisper import LocalWhisperSTTService
from pipelines.turns.after_pause import PauseTimedTurnStop
from pipelines.turns.barge_in import BargeInStrategy
from pipelines.turns.first_clause import speak_first_clause_early
from pipelines.turns.heard import HeardTextGate
from pipelines.turns.keypad import KeypadAggregator
from pipelines.turns.late_transcript import SmartTurnStop
from pipelines.turns.mute import ClosingMuteStrategy
from pipelines.turns.sentence_end import SentenceEndTurnStop
from pipelines.turns.smart_turn import SharedSmartTurnAnalyzer
from pipelines.turns.user_aggregator import CallerUserAggregator, aggregator_pair


def build(agent: AgentConfig, transport: BaseTransport, ctx: BuildContext) -> CallPipeline:
    stt = registry.build("stt", agent.transcriber, ctx)
    llm = registry.build("llm", agent.llm, ctx)
    tts = registry.build("tts", agent.tts, ctx)
    speak_first_clause_early(tts)
    read_inline(tts)
    pace_to_output(tts, transport.output())
    drop_word_progress(tts)

    vad = SharedSileroVADAnalyzer(
        sample_rate=LINE_SAMPLE_RATE,
        params=VADParams(
            confidence=agent.vad.confidence,
            start_secs=agent.vad.start_secs,
            stop_secs=agent.vad.stop_secs,
            min_volume=agent.vad.min_volume,
        ),
    )
    if isinstance(stt, LocalWhisperSTTService):
        stt.start_on_pauses(vad)
    if agent.interruption.enabled and ctx.playout is not None:
        start = [BargeInStrategy(agent.interruption, ctx.playout, label=ctx.label, on_verdict=ctx.on_barge_in)]
    else:
        start = [
            VADUserTurnStartStrategy(enable_interruptions=agent.interruption.enabled),
            # A transcript with no speech before it starts a turn too: that is how keypad digits arrive.
            TranscriptionUserTurnStartStrategy(enable_interruptions=agent.interruption.enabled),
        ]
    stop = _stop_strategy(agent, segmented_stt=isinstance(stt, SegmentedSTTService))
    strategies = UserTurnStrategies(start=start, stop=[stop])
    closing_mute = ClosingMuteStrategy()
    context = LLMContext(messages=[{"role": "system", "content": agent.system_prompt}],
                         tools=ctx.tools.tools_schema() if ctx.tools else NOT_GIVEN)
    if ctx.tools:
        ctx.tools.register(llm)
    user_aggregator, assistant_aggregator = aggregator_pair(
        context,
        LLMUserAggregatorParams(
            vad_analyzer=vad,
            user_turn_strategies=strategies,
            user_idle_timeout=agent.call.silence_timeout_secs,
            # An uninterruptible welcome: the caller is not heard until it has been said (and no `clear` is sent).
            user_mute_strategies=[closing_mute, *(
                [MuteUntilFirstBotCompleteUserMuteStrategy()]
                if agent.welcome_message and not agent.interruption.welcome_interruptible
                else []
            )],
        ),
    )
    follow_the_caller(stop, vad, user_aggregator, assistant_aggregator)
    dtmf = [KeypadAggregator()] if agent.call.dtmf else []
    # Between the output and the assistant aggregator, so the context and transcript keep only what was heard.
    heard = [HeardTextGate(ctx.playout, label=ctx.label)] if ctx.playout is not None else []
    pipeline = Pipeline(
        [transport.input(), *dtmf, stt, user_aggregator, llm, tts, transport.output(), *heard,
         assistant_aggregator]
    )
    greeting = []
    if agent.welcome_message:
        # Spoken as if the LLM had said it, not as one TTSSpeakFrame: the TTS then splits it into sentences and
        # the transcript keeps each sentence once it has played, so an interrupted welcome records what was heard.
        greeting = [LLMFullResponseStartFrame(), LLMTextFrame(agent.welcome_message), LLMFullResponseEndFrame()]
        for frame in greeting:
            frame.interruptible = agent.interruption.welcome_interruptible
    return CallPipeline(
        pipeline=pipeline,
        user_aggregator=user_aggregator,
        assistant_aggregator=assistant_aggregator,
        greeting=greeting,
        closing_mute=closing_mute,
        llm=llm,
        quiet_frames_after_secs=quiet_frames_after_secs(agent),
        vad_hears_nothing=vad.hears_nothing,
    )


# Past the longest silence an audio-time rule counts, the margin after which a quiet line gets larger frames.
QUIET_MARGIN_SECS = 1.0


def quiet_frames_after_secs(agent: AgentConfig) -> float | None:
    """How long the caller's line must be below the VAD's loudness gate before its frames may grow (see
    CallPipeline). The VAD's stop and smart-turn's limit count silence in audio, so they must have had their say
    on time; the other turn rules run on clocks. With `min_volume` 0 a window below the gate could still be speech
    to the VAD, so the frames never grow."""
    if agent.vad.min_volume <= 0:
        return None
    counted = agent.vad.stop_secs
    if agent.turn.strategy == "smart_turn":
        counted = max(counted, agent.turn.smart_turn_max_secs)
    return counted + QUIET_MARGIN_SECS


def follow_the_caller(stop, vad: SharedSileroVADAnalyzer, user_aggregator: CallerUserAggregator,
                      assistant_aggregator) -> None:
    """What a silence rule times the caller's pauses by: the agent's replies, the line's level, and how far the
    VAD has got through the caller's audio (pipelines/turns/after_pause.py, heard_silence.py)."""
    if isinstance(stop, PauseTimedTurnStop):
        stop.follow_replies(assistant_aggregator)
        stop.follow_level(vad)
        stop.follow_hearing(vad, user_aggregator)


def _stop_strategy(agent: AgentConfig, segmented_stt: bool):
    if agent.turn.strategy == "smart_turn":
        analyzer = SharedSmartTurnAnalyzer(max_silence_secs=agent.turn.smart_turn_max_secs)
        return SmartTurnStop(turn_analyzer=analyzer, segmented_stt=segmented_stt)
    turn = agent.turn
    if turn.sentence_end_secs is not None and turn.sentence_end_secs < turn.silence_secs:
        return SentenceEndTurnStop(silence_secs=turn.silence_secs, sentence_end_secs=turn.sentence_end_secs,
                                   vad_stop_secs=agent.vad.stop_secs, segmented_stt=segmented_stt)
    # pipecat's timeout starts at the VAD's stop, which itself comes `stop_secs` into the silence.
    return PauseTimedTurnStop(user_speech_timeout=max(0.0, turn.silence_secs - agent.vad.stop_secs),
                              segmented_stt=segmented_stt)
