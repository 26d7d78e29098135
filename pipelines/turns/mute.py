"""Muting the caller: once the call is closing (a goodbye is said in full and nothing the caller says starts a
turn), and during a realtime model's uninterruptible welcome."""

from __future__ import annotations

from pipecat.frames.frames import BotStartedSpeakingFrame, BotStoppedSpeakingFrame, Frame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.turns.user_mute.base_user_mute_strategy import BaseUserMuteStrategy


class ClosingMuteStrategy(BaseUserMuteStrategy):
    def __init__(self):
        super().__init__()
        self.closing = False

    def engage(self) -> None:
        self.closing = True

    async def process_frame(self, frame: Frame) -> bool:
        await super().process_frame(frame)
        return self.closing


class RealtimeWelcomeMute(FrameProcessor):
    """An uninterruptible welcome on a speech-to-speech model: the caller's audio is kept from the model (whose own
    VAD would otherwise interrupt it) until the welcome has been played out. Sits after the output transport."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self._model = model
        self._spoke = False
        model.set_audio_input_paused(True)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, BotStartedSpeakingFrame):
            self._spoke = True
        elif isinstance(frame, BotStoppedSpeakingFrame) and self._spoke and self._model is not None:
            self._model.set_audio_input_paused(False)
            self._model = None  # once: the welcome only
        await self.push_frame(frame, direction)
