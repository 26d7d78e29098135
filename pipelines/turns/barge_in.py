"""Barge-in as a pipecat user-turn start strategy: fast to go quiet, slow to give up the floor.

While the agent speaks, the caller's voice (VAD onset) holds the agent's audio at once: Twilio's buffer is cleared,
so the agent is silent within a chunk, but nothing is thrown away yet. The caller's words then decide:
  - an `always_phrases` phrase, or at least `min_words` words that are not acknowledgements → interrupt: a user turn
    starts, pipecat drops the rest of the agent's reply;
  - acknowledgements only ("uh-huh", "okay") → the agent carries on from where it stopped, and the words are
    dropped from the caller's side of the context;
  - no words within `resume_secs` after the caller goes quiet (a cough, a door) → the agent carries on. If the
    STT is still working on what the caller said by then (a busy machine), the verdict waits for its transcript,
    up to `transcript_wait_secs` more: resuming first would let a late "wait" cut the agent off a second time.
    An STT that says it made nothing of the sound (Deepgram's empty answer to the finalize at the VAD's stop:
    `NothingMoreHeardFrame`) ends that wait, so a cough costs `resume_secs`, not the wait as well.
When the agent is not speaking, the caller's voice starts a turn at once, as pipecat's VAD strategy does, and a
transcript with no voice before it (keypad digits) starts one too. While the agent speaks, such a transcript takes
the floor if it is keypad digits or words that would interrupt; otherwise it is the late end of something said
over the agent (a streaming STT can send "Uh-huh." and "Okay." as two finals, and the first has already let the
agent carry on), and it is dropped like any acknowledgement. pipecat's transcript rule would interrupt on it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from enum import Enum

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_start.base_user_turn_start_strategy import BaseUserTurnStartStrategy

from config.agent import InterruptionConfig
from pipelines.stt_frames import NothingMoreHeardFrame
from pipelines.turns.keypad import DTMF_PREFIX
from pipelines.turns.playout import Playout

# The longest the agent's audio stays held. The carrier's output waits meanwhile, and pipecat's output takes a write
# that outlasts `audio_out_write_timeout_secs` (10 s) for a peer that stopped reading and ends the call: a caller
# talking over the agent with nothing the STT makes words of (a provider that has stopped answering, a noisy room),
# or a long `resume_secs` plus `transcript_wait_secs`, would get there. At the limit a caller still speaking has
# the floor; one who has gone quiet hears the agent carry on.
HOLD_LIMIT_SECS = 8.0

_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Verdict(Enum):
    INTERRUPT = "interrupt"
    ACKNOWLEDGE = "acknowledge"  # only acknowledgements
    UNDECIDED = "undecided"  # no words, or too few yet


class Policy:
    """Classifies what the caller said over the agent."""

    def __init__(self, cfg: InterruptionConfig):
        self.min_words = cfg.min_words
        self._acks = sorted((tuple(words(p)) for p in cfg.ack_phrases if words(p)), key=len, reverse=True)
        self._always = [tuple(words(p)) for p in cfg.always_phrases if words(p)]

    def verdict(self, text: str) -> Verdict:
        said = words(text)
        if not said:
            return Verdict.UNDECIDED
        for phrase in self._always:
            n = len(phrase)
            if any(tuple(said[i:i + n]) == phrase for i in range(len(said) - n + 1)):
                return Verdict.INTERRUPT
        rest = self._without_acks(said)
        if not rest:
            return Verdict.ACKNOWLEDGE
        return Verdict.INTERRUPT if len(rest) >= self.min_words else Verdict.UNDECIDED

    def _without_acks(self, said: list[str]) -> list[str]:
        rest, i = [], 0
        while i < len(said):
            for phrase in self._acks:
                if tuple(said[i:i + len(phrase)]) == phrase:
                    i += len(phrase)
                    break
            else:
                rest.append(said[i])
                i += 1
        return rest


class BargeInStrategy(BaseUserTurnStartStrategy):
    def __init__(self, cfg: InterruptionConfig, playout: Playout, *, label: str = "call",
                 on_verdict: Callable[[str, float], None] | None = None, hold_limit_secs: float = HOLD_LIMIT_SECS,
                 **kwargs):
        """`on_verdict(verdict, secs)`: told how each hold ended (interrupt, acknowledge, resume) and how long the
        agent was held first (for metrics)."""
        super().__init__(enable_interruptions=True, **kwargs)
        self._policy = Policy(cfg)
        self._resume_secs = cfg.resume_secs
        self._playout = playout
        self._label = label
        self._bot_speaking = False
        self._holding = False
        self._caller_speaking = False
        self._heard: list[str] = []  # final transcripts while holding
        self._transcript_wait_secs = cfg.transcript_wait_secs
        self._transcript_due = False  # the caller went quiet while holding; no final transcript since
        self._transcript_seen = asyncio.Event()
        self._resume_task: asyncio.Task | None = None
        self._held_at = 0.0
        self._on_verdict = on_verdict
        self._in_turn = False  # a caller's turn is under way (pipecat's controller tells every start strategy)
        self._hold_limit_secs = hold_limit_secs
        self._limit_task: asyncio.Task | None = None

    def _decided(self, verdict: str) -> None:
        if self._on_verdict is not None:
            self._on_verdict(verdict, time.monotonic() - self._held_at)

    async def handle_user_turn_started(self):
        self._in_turn = True
        await self._end_hold()

    async def handle_user_turn_stopped(self):
        self._in_turn = False

    async def cleanup(self):
        self._cancel_resume()
        if self._limit_task is not None:
            self._limit_task.cancel()
            self._limit_task = None

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            if self._holding:
                # The agent had already said everything; what the caller is saying is simply their turn.
                await self._end_hold()
                await self.trigger_user_turn_started()
                return ProcessFrameResult.STOP
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._caller_speaking = True
            return await self._voice_started()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._caller_speaking = False
            if self._holding:
                self._transcript_due = True
                self._transcript_seen.clear()
                self._arm_resume()
        elif isinstance(frame, (TranscriptionFrame, InterimTranscriptionFrame)):
            return await self._words(frame)
        elif isinstance(frame, NothingMoreHeardFrame) and self._transcript_due:
            self._transcript_due = False  # the STT made nothing (more) of it: no transcript to wait for
            self._transcript_seen.set()
        return ProcessFrameResult.CONTINUE

    async def _voice_started(self) -> ProcessFrameResult:
        self._cancel_resume()
        if self._holding:
            return ProcessFrameResult.STOP
        # A voice during the caller's own turn is that turn going on, whatever the agent's speaking flag says (the
        # interruption that started the turn stopped the agent's audio, and under load BotStoppedSpeakingFrame can
        # come seconds later). No hold then: pipecat starts no second turn, so neither a turn start nor an
        # interruption would ever end it, and the agent's next reply would wait behind it until the output's
        # write deadline (10 s) ended the call.
        if self._bot_speaking and not self._in_turn and await self._playout.hold():
            self._holding = True
            self._held_at = time.monotonic()
            self._heard = []
            if self._limit_task is not None:
                self._limit_task.cancel()
            self._limit_task = asyncio.create_task(self._limit_hold(self._held_at),
                                                   name=f"barge-in-limit-{self._label}")
            logger.debug(f"{self._label}: caller spoke over the agent; holding its audio")
            return ProcessFrameResult.STOP
        await self.trigger_user_turn_started()
        return ProcessFrameResult.STOP

    async def _words(self, frame: TranscriptionFrame | InterimTranscriptionFrame) -> ProcessFrameResult:
        if not self._holding:
            if self._in_turn:
                return ProcessFrameResult.STOP  # the words of the caller's turn under way (see _voice_started)
            if self._bot_speaking and not self._caller_speaking and isinstance(frame, TranscriptionFrame):
                # Words with no voice before them while the agent speaks (see the module's docstring).
                if frame.text.startswith(DTMF_PREFIX) or self._policy.verdict(frame.text) is Verdict.INTERRUPT:
                    await self.trigger_user_turn_started()
                else:
                    logger.info(f"{self._label}: {frame.text.strip()!r}, with no voice before it, does not "
                                "interrupt; the agent carries on")
                    await self.trigger_reset_aggregation()  # what was said over the agent is not a turn
                return ProcessFrameResult.STOP
            if not self._bot_speaking:
                await self.trigger_user_turn_started()
                return ProcessFrameResult.STOP
            return ProcessFrameResult.CONTINUE
        final = isinstance(frame, TranscriptionFrame)
        text = " ".join([*self._heard, frame.text])
        if final:
            self._heard.append(frame.text)
            self._transcript_due = False
            self._transcript_seen.set()
        verdict = self._policy.verdict(text)
        if verdict is Verdict.INTERRUPT:
            logger.info(f"{self._label}: barge-in on {text.strip()!r}")
            await self._interrupt()
            return ProcessFrameResult.STOP
        if final and verdict is Verdict.ACKNOWLEDGE and not self._caller_speaking:
            logger.info(f"{self._label}: {text.strip()!r} is an acknowledgement; the agent carries on")
            self._decided("acknowledge")
            await self._resume()
        return ProcessFrameResult.STOP

    def _arm_resume(self) -> None:
        self._cancel_resume()
        self._resume_task = asyncio.create_task(self._resume_later(), name=f"barge-in-resume-{self._label}")

    def _cancel_resume(self) -> None:
        if self._resume_task is not None:
            if self._resume_task is not asyncio.current_task():
                self._resume_task.cancel()
            self._resume_task = None

    async def _resume_later(self) -> None:
        await asyncio.sleep(self._resume_secs)
        if self._transcript_due:
            try:
                await asyncio.wait_for(self._transcript_seen.wait(), self._transcript_wait_secs)
            except asyncio.TimeoutError:
                pass  # noise the STT made nothing of
            if not self._holding:
                return  # the transcript decided: an interruption
        self._resume_task = None
        if self._holding and not self._caller_speaking:
            heard = " ".join(self._heard).strip()
            logger.info(f"{self._label}: no interruption in {heard!r}; the agent carries on")
            self._decided("resume")
            await self._resume()

    async def _limit_hold(self, held_at: float) -> None:
        await asyncio.sleep(self._hold_limit_secs)
        self._limit_task = None
        if not self._holding or self._held_at != held_at:
            return  # decided meanwhile (a later hold has its own limit)
        if self._caller_speaking:
            logger.info(f"{self._label}: the caller has spoken over the agent for {self._hold_limit_secs:g} s "
                        "without a word that decides; they have the floor")
            await self._interrupt()
        else:
            logger.info(f"{self._label}: no interruption within the hold's {self._hold_limit_secs:g} s; the agent "
                        "carries on")
            self._decided("resume")
            await self._resume()

    async def _interrupt(self) -> None:
        self._decided("interrupt")
        self._holding = False
        self._cancel_resume()
        await self.trigger_user_turn_started()  # its interruption drops the held audio

    async def _resume(self) -> None:
        self._holding = False
        self._heard = []
        self._transcript_due = False
        self._cancel_resume()
        await self.trigger_reset_aggregation()  # what was said over the agent is not a turn
        await self._playout.resume()

    async def _end_hold(self) -> None:
        self._cancel_resume()
        if self._holding:
            self._holding = False
            await self._playout.resume()
