"""Call controls enforced by the session: a maximum duration, and silence handled with reminders, each ending in
a spoken message and a hang-up with the matching reason."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from loguru import logger
from pipecat.frames.frames import EndWorkerFrame, Frame, TTSSpeakFrame
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor

from config.agent import CallConfig
from runtime.reasons import DisconnectionReason as R

# Words per second of speech, and slack, for how long a closing message may take before the call is cut anyway.
_WORDS_PER_SEC = 2.0
_CLOSING_SLACK_SECS = 5.0
_REPLY_ALLOWANCE_SECS = 20.0


class CallControls:
    def __init__(self, cfg: CallConfig, worker: PipelineWorker, end_with: Callable[[R, str], None],
                 cancel: Callable[[str], None], label: str, on_closing: Callable[[], None] | None = None):
        self.cfg, self.worker = cfg, worker
        self._on_closing = on_closing
        self._end_with, self._cancel, self._label = end_with, cancel, label
        self._reminders = 0
        self._closing = False
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._max_duration(), name=f"max-duration-{self._label}"))

    def stop(self) -> None:
        # Let go of them too: a cancelled task keeps its CancelledError, whose traceback holds the frame that
        # refers back here, a cycle only the full collector would free.
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    def attach(self, user_aggregator) -> None:
        @user_aggregator.event_handler("on_user_turn_started")
        async def _caller_spoke(_agg, _strategy):
            self._reminders = 0

        @user_aggregator.event_handler("on_user_turn_idle")
        async def _silence(_agg):
            await self.on_silence()

    async def on_silence(self) -> None:
        if self._closing:
            return
        if self._reminders < self.cfg.silence_max_reminders:
            self._reminders += 1
            logger.info(f"call {self._label}: caller silent for {self.cfg.silence_timeout_secs:g}s, "
                        f"reminder {self._reminders}/{self.cfg.silence_max_reminders}")
            await self.worker.queue_frame(TTSSpeakFrame(self.cfg.silence_reminder))
            return
        await self.close(R.SILENCE_TIMEOUT, self.cfg.silence_goodbye,
                         f"no speech after {self._reminders} reminder(s)")

    async def _max_duration(self) -> None:
        await asyncio.sleep(self.cfg.max_duration_secs)
        await self.close(R.MAX_DURATION, self.cfg.max_duration_message, f"{self.cfg.max_duration_secs}s limit")

    async def close(self, reason: R, message: str, detail: str) -> None:
        """Say `message` (the caller cannot interrupt it), then hang up; cut the call if that takes too long."""
        await self.end_after_speech(reason, detail, message=message)

    async def end_after_speech(self, reason: R, detail: str, *, message: str | None = None,
                               audio: list[Frame] | None = None, source: FrameProcessor | None = None) -> None:
        """End the call once everything queued before it (and `message`, if given) has been said.

        With `source` (the LLM, from a tool call) the ending goes downstream from there, behind the words the LLM
        has already produced; otherwise it enters at the pipeline's start."""
        if self._closing:
            return
        self._closing = True
        if self._on_closing:
            self._on_closing()
        self._end_with(reason, detail)
        logger.info(f"call {self._label}: closing: {reason} ({detail})")
        frames: list = list(audio or [])
        if message:
            goodbye = TTSSpeakFrame(message)
            goodbye.interruptible = False
            frames.append(goodbye)
        frames.append(EndWorkerFrame(reason=str(reason)))
        if source is not None:
            for frame in frames:
                await source.push_frame(frame)
        else:
            await self.worker.queue_frames(frames)
        # The reply may still be long when the LLM decides to end: allow it, but not forever.
        words = len(message.split()) if message else 0
        words += sum(len(f.audio) for f in audio or []) / (2 * 8000) * _WORDS_PER_SEC
        allowance = _REPLY_ALLOWANCE_SECS if source is not None else 0.0
        self._tasks.append(asyncio.create_task(self._deadline(words / _WORDS_PER_SEC + allowance)))

    async def _deadline(self, speech_secs: float) -> None:
        await asyncio.sleep(speech_secs + _CLOSING_SLACK_SECS)
        self._cancel("closing message took too long")
