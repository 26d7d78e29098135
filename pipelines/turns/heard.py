"""Keeps the agent's side of the conversation to what the caller actually heard.

Sits right after the output transport, which lets each `TTSTextFrame` through once the audio before it has been
sent. Sent is not heard: the carrier still has it buffered. So each text frame is held here behind a mark, and
released towards the assistant aggregator (and with it the LLM context and the transcript) only when the carrier
reports the mark played. An interruption drops whatever is still held: the caller never heard it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque

from loguru import logger
from pipecat.frames.frames import Frame, InterruptionFrame, SystemFrame, TTSTextFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipelines.turns.playout import Playout

# A client that never echoes marks (not Twilio) must not stall the conversation: after this long, held text
# counts as heard.
MARK_TIMEOUT_SECS = 3.0


class HeardTextGate(FrameProcessor):
    def __init__(self, playout: Playout, *, label: str = "call", mark_timeout: float = MARK_TIMEOUT_SECS, **kwargs):
        super().__init__(**kwargs)
        self._playout = playout
        self._label = label
        self._mark_timeout = mark_timeout
        self._names = (f"vx{n}" for n in itertools.count(1))
        # Downstream frames in order; a text frame waits at the head until its mark is played.
        self._queue: deque[tuple[Frame, str | None]] = deque()
        self._played: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._warned = False
        playout.on_mark(self._on_played)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction is FrameDirection.UPSTREAM or isinstance(frame, SystemFrame):
            if isinstance(frame, InterruptionFrame):
                self._drop_text()
            await self.push_frame(frame, direction)
            if isinstance(frame, InterruptionFrame):
                await self._flush()
            return
        if isinstance(frame, TTSTextFrame):
            name = next(self._names)
            self._queue.append((frame, name))
            await self._playout.mark(name)
            self._arm_timer()
            return
        if not self._queue:
            await self.push_frame(frame, direction)
            return
        self._queue.append((frame, None))

    async def cleanup(self):
        # The call is over: a mark timer left armed (the caller hung up before the carrier echoed the last mark)
        # would fire into a finished pipeline and keep this call's objects alive until it did.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await super().cleanup()

    def _drop_text(self) -> None:
        dropped = [f for f, name in self._queue if name is not None and f.interruptible and name not in self._played]
        if dropped:
            logger.debug(f"{self._label}: interrupted; not heard: {' '.join(f.text for f in dropped)!r}")
        self._queue = deque((f, n) for f, n in self._queue if not (n is not None and f in dropped))

    async def _on_played(self, name: str) -> None:
        self._played.add(name)
        await self._flush()

    async def _flush(self) -> None:
        while self._queue:
            frame, name = self._queue[0]
            if name is not None and name not in self._played:
                break
            self._queue.popleft()
            self._played.discard(name)
            await self.push_frame(frame)
        if not self._queue and self._timer:
            self._timer.cancel()
            self._timer = None

    def _arm_timer(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._mark_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if not self._queue:
            return
        if self._playout.holding:  # the caller is talking over the agent: marks wait for the verdict
            self._arm_timer()
            return
        if not self._warned:
            self._warned = True
            logger.warning(f"{self._label}: the carrier did not echo a mark in {self._mark_timeout:g}s; "
                           "treating agent speech as heard once sent")
        for _, name in self._queue:
            if name is not None:
                self._played.add(name)
        self.create_task(self._flush(), name="heard-flush")
