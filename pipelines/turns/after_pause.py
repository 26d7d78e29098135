"""The silence rules' clock: from when the line fell silent, and from the VAD's stop for a turn that starts after it.

pipecat times a turn's silence from the VAD's stop, taken as `stop_secs` into the silence. But Silero's confidence
falls after the words (32–68 ms later in a server log of the load benchmark), where the line's level falls at once,
so every turn waited that much longer than its silence. On a line that falls near-silent when the words end (digital silence, VoIP, noise-suppressed mobiles),
the VAD sees when (`quiet_since`, pipelines/providers/vad.py), and the silence is counted from there; on a noisy
line nothing changes.

Barge-in decides on the words the caller said over the agent (pipelines/turns/barge_in.py), and Whisper's words
come after the VAD's stop, so such a turn starts in the pause, on its transcript. pipecat 1.14 then times the whole
silence from that transcript, as if the caller had just spoken (its "transcript without a VAD stop" fallback): a
question asked over the agent waited ~0.5 s longer for its answer than the same question asked in silence. Here
that silence is timed from the VAD's stop, as in any other turn. The turn does not end before the reply it
interrupted is in the context (and the call's transcript): ending it in the same tick as the interruption would put
the caller's words before that reply. pipecat's own wait, from the transcript, stays the upper bound.

Tied to pipecat 1.14's SpeechTimeoutUserTurnStopStrategy internals (its timer task, `_vad_stopped`,
`_user_speech_wait_done`), like the other stop rules here.
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger
from pipecat.frames.frames import TranscriptionFrame, VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame

from pipelines.turns.heard_silence import HeardSilenceTurnStop

# Silero hears a pause this much after the level at most: a longer lead is not that lag (a soft ending the level
# took for silence), and only this much of it counts.
MAX_LEVEL_LEAD_SECS = 0.15


class PauseTimedTurnStop(HeardSilenceTurnStop):
    """pipecat's silence timeout with the late-transcript guard, counted from when the line fell silent where the
    VAD saw that, and timed from the VAD's stop also for a turn that starts in the pause. Call `follow_replies`
    with the call's assistant aggregator, `follow_level` with its VAD, and `follow_hearing` with its VAD and user
    aggregator."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._stopped_at = 0.0  # the VAD's stop, less the level's lead
        self._lead = 0.0  # how long before the VAD's reckoning (its stop less `stop_secs`) the line fell silent
        self._vad = None
        self._paused = False  # the VAD has stopped, and since then the caller has not spoken nor a turn ended
        self._reply_done = asyncio.Event()  # no reply of the agent's is open in the context
        self._reply_done.set()

    def follow_replies(self, assistant) -> None:
        """Know when the agent's reply, interrupted or not, is in the context: `assistant`'s events say so."""
        assistant.add_event_handler("on_assistant_turn_started", lambda *_: self._reply_done.clear())
        assistant.add_event_handler("on_assistant_turn_stopped", lambda *_: self._reply_done.set())

    def follow_level(self, vad) -> None:
        """Count the silence from when `vad` (a SharedSileroVADAnalyzer) saw the line fall near-silent."""
        vad.track_quiet = True
        self._vad = vad

    def _level_lead(self, now: float, stop_secs: float) -> float:
        quiet_since = self._vad.quiet_since if self._vad is not None else None
        if quiet_since is None:
            return 0.0
        return min(MAX_LEVEL_LEAD_SECS, max(0.0, now - stop_secs - quiet_since))

    async def _restart_user_speech_timer(self):
        """pipecat's, shortened by the level's lead when the VAD's stop starts it."""
        if not (self._vad_stopped and self._lead):
            return await super()._restart_user_speech_timer()
        if self._user_speech_timeout_task:
            await self.task_manager.cancel_task(self._user_speech_timeout_task)
        self._user_speech_wait_done = False
        self._user_speech_timeout_task = self.task_manager.create_task(
            self._user_speech_timeout_handler(max(0.0, self._user_speech_timeout - self._lead)),
            f"{self}::_user_speech_timeout_handler")

    def _pause_timeout(self) -> float:
        """The silence, counted from the VAD's stop, that ends a turn started in the pause."""
        return self._user_speech_timeout

    async def handle_user_turn_stopped(self):
        self._paused = False  # a turn a transcript starts later (keypad digits) is not timed from this pause
        await super().handle_user_turn_stopped()

    async def process_frame(self, frame):
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._paused = False
            self._lead = 0.0
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            now = time.monotonic()
            self._lead = self._level_lead(now, frame.stop_secs)
            self._stopped_at = now - self._lead
            self._paused = True
            if self._lead:
                logger.debug(f"{self}: the line fell silent {self._lead:.3f} s before the VAD's reckoning; the "
                             "silence counts from there")
        result = await super().process_frame(frame)
        # pipecat's fallback has just armed its timer from this transcript: time it from the stop instead.
        if (isinstance(frame, TranscriptionFrame) and self._paused and not self._vad_stopped
                and self._user_speech_timeout_task is not None):
            timeout = self._pause_timeout()
            logger.debug(f"{self}: words in the caller's pause; a {timeout:.2f} s silence counts from the VAD's "
                         "stop, not from them")
            await self.task_manager.cancel_task(self._user_speech_timeout_task)
            self._user_speech_timeout_task = self.task_manager.create_task(
                self._after_pause(timeout), f"{self}::_after_pause")
        return result

    async def _after_pause(self, timeout: float) -> None:
        try:
            if not self._reply_done.is_set():
                try:
                    await asyncio.wait_for(self._reply_done.wait(), self._user_speech_timeout)
                except TimeoutError:
                    pass
            # At least one turn of the loop: the reply's other listeners (the call's transcript) go first.
            await asyncio.sleep(max(0.0, timeout - (time.monotonic() - self._stopped_at)))
        except asyncio.CancelledError:
            return
        finally:
            self._user_speech_timeout_task = None
        self._user_speech_wait_done = True
        await self._maybe_trigger_user_turn_stopped()
