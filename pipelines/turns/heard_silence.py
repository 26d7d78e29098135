"""A turn ends on silence the VAD has heard, not on the clock alone.

The silence rules run on timers (pipecat's `user_speech_timeout` from the VAD's stop, and the shorter ones here),
while the VAD judges the caller's audio as it reaches the user aggregator. The clock can run ahead of the ears:
- the caller goes on before the timer fires, but the VAD calls it speech only after `start_secs` of it (0.1 s).
  Espeak's "Hello, I would like to book a table for two people tonight." has a 0.19 s pause at the comma; for two
  of the eight ways its windows can fall, Silero stops in it and starts again 0.1 s after the words resume, which is
  when the sentence rule's timer fires once Whisper has written "Hello?" (a finished sentence: 0.3 s of silence).
  A CI run (2026-12-05) stored "Hello?" as the caller's turn and the rest as a second one;
- under load the caller's audio waits for the VAD (170-450 ms at p95 at 100 calls on two cores: bench/HISTORY.md,
  session 26), and the timer fires before the caller's next words have been analyzed.
So a turn the timers end is ended only once the VAD hears nothing and has analyzed all the caller's audio that had
reached the aggregator by then. Until then the end is held: the VAD's start drops it (pipecat's own reset, which a
new start makes), and otherwise the first caller frame analyzed after that audio, with the VAD quiet, releases it.
The hold gives way to the clock after MAX_HOLD_SECS: a caller's stream can stall, and a muted caller's audio is
not analyzed. On an idle server it costs at most the frame being analyzed when the timer fires (~10 ms).

The same hold waits for words a streaming STT has in flight: an interim transcript has come and its final has
not. pipecat waits for the final only up to the STT's p99 latency past the VAD's stop (Deepgram's: 0.35 s, so
0.15 s), then ends the turn on the words it has. Under load the final came later than that: the turn ended on the
caller's earlier words (a turn that an interruption had started ended on the interruption's words), and the final,
arriving with the agent about to answer, started a turn of its own that cut the answer off; the caller's next words
over the agent then found nothing to hold (3 of 300 turns in a run at 100 calls: bench/HISTORY.md, session 33).
Deepgram always sends the final (pipecat asks for it with `Finalize` at the VAD's stop), so it is worth waiting
for; the final releases the hold, and so does its empty answer to the finalize (`NothingMoreHeardFrame`: it
dropped the interim's words), and MAX_HOLD_SECS bounds it as above. A segmented STT sends no interims, so this
never holds a Whisper turn.

A turn can also have no words at all: an interim started it (a barge-in decided on "Where are you") and the STT then
dropped those words. pipecat's rule ends a turn only once it has words, so such a turn ended on its watchdog
(`user_turn_stop_timeout`, 5 s after the caller's last sound), with the agent cut off and silent all that time. Once
the STT says it made nothing of the sound (`NothingMoreHeardFrame`), a wordless turn ends on the silence like any
other (the long one: no words end a sentence), and pipecat's empty-turn handling (`EmptyUserTurnConfig`: by default
the model is asked once to have the caller repeat, when the turn cut the agent off) decides what is said.

Tied to pipecat 1.14's `trigger_user_turn_stopped` (what every stop rule calls to end the turn) and
`_discard_pending_end_of_turn` (what it calls when the caller speaks again or a turn begins or ends).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from loguru import logger
from pipecat.frames.frames import InputAudioRawFrame, InterimTranscriptionFrame, TranscriptionFrame

from pipelines.stt_frames import NothingMoreHeardFrame
from pipelines.turns.late_transcript import SilenceTurnStop

# Past the clock, the longest a turn's end waits for the VAD to catch up.
MAX_HOLD_SECS = 1.0


class Ears(Protocol):
    """The user aggregator's count of the caller's audio frames (pipelines/turns/user_aggregator.py)."""

    audio_arrived: int  # queued to it
    audio_settled: int  # of those, done with: analyzed by its VAD (or dropped while the caller is muted)


class HeardSilenceTurnStop(SilenceTurnStop):
    """pipecat's silence timeout, with the late-transcript guard, whose end waits for the VAD to have heard the
    silence. Call `follow_hearing` with the call's VAD and user aggregator."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._hearing: tuple[object, Ears] | None = None
        self._held: tuple[int, dict] | None = None  # (caller frames to be analyzed first, the trigger's arguments)
        self._hold_timer: asyncio.Task | None = None
        self._words_in_flight = False  # an interim transcript has come and no final since
        self._in_turn = False
        self._heard_nothing = False  # the STT made nothing of the turn's sound (NothingMoreHeardFrame)

    def follow_hearing(self, vad, ears: Ears) -> None:
        """`vad`: the call's SharedSileroVADAnalyzer; `ears`: the aggregator running it on the caller's audio."""
        self._hearing = (vad, ears)

    def _heard(self, frames: int, analyzing: int = 0) -> bool:
        """The VAD hears nothing, and has analyzed the caller's first `frames` frames. `analyzing`: 1 while the
        aggregator hands the rules the frame its VAD has just analyzed (it is settled once they are done)."""
        vad, ears = self._hearing
        return ears.audio_settled + analyzing >= frames and vad.hears_nothing()

    def _ready(self, frames: int, analyzing: int = 0) -> bool:
        """No words in flight, and the VAD has heard the silence (`_heard`), where it is followed."""
        return not self._words_in_flight and (self._hearing is None or self._heard(frames, analyzing))

    async def trigger_user_turn_stopped(self, **kwargs):
        arrived = self._hearing[1].audio_arrived if self._hearing is not None else 0
        if self._ready(arrived):
            await self._drop_hold()
            return await super().trigger_user_turn_stopped(**kwargs)
        self._held = (arrived, kwargs)
        if self._words_in_flight:
            state = "the STT has words in flight (an interim, no final yet)"
        else:
            vad, ears = self._hearing
            state = (f"the VAD is {ears.audio_arrived - ears.audio_settled} caller frame(s) behind"
                     if vad.hears_nothing() else "the VAD is hearing sound")
        logger.debug(f"{self}: the silence is up on the clock, but {state}: the turn's end waits for it")
        if self._hold_timer is None:
            self._hold_timer = self.task_manager.create_task(self._give_way(), f"{self}::_give_way")

    async def process_frame(self, frame):
        landing = isinstance(frame, TranscriptionFrame) and self._words_in_flight
        if isinstance(frame, InterimTranscriptionFrame) and not self._segmented:
            self._words_in_flight = True
        # A final that lands while the end is held keeps it held through pipecat's handling (which would end the
        # turn at once), so that `_final_landed` decides on the words.
        result = await super().process_frame(frame)
        if isinstance(frame, TranscriptionFrame):
            self._words_in_flight = False
        if isinstance(frame, NothingMoreHeardFrame):
            dropped, self._words_in_flight = self._words_in_flight, False  # the turn has the words it had
            if self._in_turn and not self._text and not self._vad_user_speaking:
                await self._end_wordless()
            elif dropped and self._held is not None and self._ready(self._held[0]):
                await self._release()
        elif self._held is not None:
            if landing and self._ready(self._held[0]):
                await self._final_landed()
            elif isinstance(frame, InputAudioRawFrame) and self._ready(self._held[0], 1):
                await self._release()
        return result

    async def _end_wordless(self) -> None:
        """The turn has no words and the STT has nothing more for its sound: end it after the silence, as a turn
        with words would end, not on pipecat's watchdog (`user_turn_stop_timeout`, 5 s past the caller's last
        sound). pipecat's empty-turn handling then decides what the agent says, if anything."""
        self._heard_nothing = True
        self._stt_wait_done = True
        if self._stt_timeout_task is not None:
            await self.task_manager.cancel_task(self._stt_timeout_task)
            self._stt_timeout_task = None
        if self._user_speech_wait_done or self._user_speech_timeout_task is not None:
            await self._maybe_trigger_user_turn_stopped()
        else:  # a turn started after the VAD's stop (on an interim in the pause): no silence timer runs yet
            await self._restart_user_speech_timer()

    async def _maybe_trigger_user_turn_stopped(self):
        if not (self._heard_nothing and not self._text):
            return await super()._maybe_trigger_user_turn_stopped()
        # pipecat's own check wants words; a turn the STT made nothing of needs only the silence.
        if not self._vad_user_speaking and self._user_speech_wait_done:
            await self.trigger_user_turn_stopped()

    async def _final_landed(self) -> None:
        """The final for the words in flight has come, and the turn's end was held for it: end the turn now. A
        rule that wants more silence after some words (the sentence rule) may re-time it instead."""
        await self._release()

    async def handle_user_turn_started(self):
        await super().handle_user_turn_started()
        self._in_turn = True

    async def handle_user_turn_stopped(self):
        self._words_in_flight = False  # a final after the turn is the next turn's (a start rule's) business
        self._in_turn = False
        await super().handle_user_turn_stopped()

    async def _release(self) -> None:
        _, kwargs = self._held
        await self._drop_hold()
        await super().trigger_user_turn_stopped(**kwargs)

    async def _give_way(self) -> None:
        try:
            await asyncio.sleep(MAX_HOLD_SECS)
        except asyncio.CancelledError:
            return
        self._hold_timer = None  # this task, which the release must not cancel
        if self._held is not None:
            logger.debug(f"{self}: the VAD or the STT did not catch up within {MAX_HOLD_SECS} s; the turn ends on "
                         "the clock")
            await self._release()

    async def _drop_hold(self) -> None:
        self._held = None
        if self._hold_timer is not None:
            await self.task_manager.cancel_task(self._hold_timer)
            self._hold_timer = None

    async def _discard_pending_end_of_turn(self):
        self._heard_nothing = False  # the caller spoke again (or a turn began or ended): the next answer decides
        await self._drop_hold()
        await super()._discard_pending_end_of_turn()

    async def cleanup(self):
        await self._drop_hold()
        await super().cleanup()
