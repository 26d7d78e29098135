"""The caller's side of the context, and the end of the road for the caller's audio.

In pipecat 1.14 the user aggregator runs the VAD and the turn strategies (smart-turn included) on the caller's
audio, then pushes every audio frame on downstream, where nothing in a `pipeline` call uses it: the LLM, the TTS,
the output transport and the assistant aggregator each take and hand on 25 frames a second per call, with a
queue hop and an observer notification each time. Recording taps the audio in the serializer, before all this.

While the caller speaks, its VAD broadcasts a `UserSpeakingFrame` both ways every 0.2 s, through every processor of
the call (~170 µs of CPU each, as the output's bot-speaking heartbeat: `bench/bot_speaking.py`). Its only reader
in a call is pipecat's idle watch (300 s); the turn rules go by the VAD's started/stopped frames. Here it comes
once a second, as the bot's does (telephony/audio_out.py), and a call stops it at its first push
(`runtime/call_observer.py`). Tied to pipecat 1.14's `_vad_controller` and its
`_speech_activity_period`, pinned like the other seams.
"""

from __future__ import annotations

from pipecat.frames.frames import Frame, InputAudioRawFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMAssistantAggregator,
    LLMAssistantAggregatorParams,
    LLMUserAggregator,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection

USER_SPEAKING_EVERY_SECS = 1.0  # pipecat's is 0.2; the bot's heartbeat is the same (telephony/audio_out.py)


class CallerUserAggregator(LLMUserAggregator):
    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, InputAudioRawFrame):
            return
        await super().push_frame(frame, direction)


def aggregator_pair(context: LLMContext, user_params: LLMUserAggregatorParams
                    ) -> tuple[CallerUserAggregator, LLMAssistantAggregator]:
    """As pipecat's LLMContextAggregatorPair (cascade mode), with the user half above."""
    user = CallerUserAggregator(context, params=user_params)
    if user._vad_controller is not None:
        user._vad_controller._speech_activity_period = USER_SPEAKING_EVERY_SECS
    assistant = LLMAssistantAggregator(context, params=LLMAssistantAggregatorParams(), _paired_user_aggregator=user)
    return user, assistant
