"""The caller's side of the context, and the end of the road for the caller's audio.

In pipecat 1.14 the user aggregator runs the VAD and the turn strategies (smart-turn included) on the caller's
audio, then pushes every audio frame on downstream, where nothing in a `pipeline` call uses it: the LLM, the TTS,
the output transport and the assistant aggregator each take and hand on 25 frames a second per call, with a
queue hop and an observer notification each time. Recording taps the audio in the serializer, before all this.
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


class CallerUserAggregator(LLMUserAggregator):
    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, InputAudioRawFrame):
            return
        await super().push_frame(frame, direction)


def aggregator_pair(context: LLMContext, user_params: LLMUserAggregatorParams
                    ) -> tuple[CallerUserAggregator, LLMAssistantAggregator]:
    """As pipecat's LLMContextAggregatorPair (cascade mode), with the user half above."""
    user = CallerUserAggregator(context, params=user_params)
    assistant = LLMAssistantAggregator(context, params=LLMAssistantAggregatorParams(), _paired_user_aggregator=user)
    return user, assistant
