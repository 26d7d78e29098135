"""Mute the caller once the call is closing: a goodbye is said in full and nothing the caller says starts a turn."""

from __future__ import annotations

from pipecat.frames.frames import Frame
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
