"""End of turn by silence, sooner when the caller's words end a sentence.

A caller who asked "Where are you located?" is done; one who said "I need help with my..." is not. Both pause the
same way, and a single silence timeout has to be long enough for the second, which makes every complete question
wait for it too. Transcribers punctuate: Whisper ends a finished question with "?" and a trailing-off phrase with
"...". So the turn ends after `sentence_end_secs` of silence when the caller's latest words end a sentence, and
after `silence_secs` otherwise. This is the rule hosted platforms call punctuation-based
endpointing (Vapi waits 0.1 s after a punctuated transcript and 1.5 s after an unpunctuated one).

Numbers are read in chunks ("my number is 4 5 7."), so a sentence that ends in a digit keeps the long wait, as does
one that ends in a word no sentence ends with ("a table for."): Whisper sometimes puts a full stop after those.
A wrong guess costs little: the agent starts answering, the caller goes on, and barge-in holds the agent's audio.

Tied to pipecat 1.14's SpeechTimeoutUserTurnStopStrategy internals (its timer task and flags). A segmented STT's
late transcript is kept from ending the turn early by the base class (pipelines/turns/late_transcript.py).
"""

from __future__ import annotations

import asyncio
import re
import time

from loguru import logger
from pipecat.frames.frames import TranscriptionFrame, VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame

from pipelines.turns.late_transcript import SilenceTurnStop

_SENTENCE_END = re.compile(r"[.?!][\"')\]]*$")
_TRAILING_OFF = re.compile(r"(\.\.|…)[\"')\]]*$")
_WORD = re.compile(r"[\w']+")
# Words an English sentence does not end with: articles, conjunctions, prepositions, possessives, copulas.
OPEN_ENDINGS = frozenset(
    "a an the and or but so because if than that to for of with from in on at by about into my your our their his "
    "her its is are was were am".split())


def ends_sentence(text: str) -> bool:
    """Whether `text` reads as a finished sentence: it ends in . ? or ! (not "..."), and not in a number or a word
    no sentence ends with."""
    text = text.strip()
    if not _SENTENCE_END.search(text) or _TRAILING_OFF.search(text):
        return False
    words = _WORD.findall(text.lower())
    return bool(words) and not words[-1].isdigit() and words[-1] not in OPEN_ENDINGS


class SentenceEndTurnStop(SilenceTurnStop):
    """pipecat's silence timeout (which starts at the VAD's stop, itself `vad_stop_secs` into the silence), cut to
    `sentence_end_secs` of silence once the caller's latest words end a sentence."""

    def __init__(self, *, silence_secs: float, sentence_end_secs: float, vad_stop_secs: float,
                 segmented_stt: bool, **kwargs):
        super().__init__(user_speech_timeout=max(0.0, silence_secs - vad_stop_secs), segmented_stt=segmented_stt,
                         **kwargs)
        self._sentence_timeout = max(0.0, min(sentence_end_secs, silence_secs) - vad_stop_secs)
        # Which words judge a pause. A segmented STT (Whisper) transcribes only after a pause, so words it sends
        # while the caller speaks again are the late transcript of what came before: only words that arrive in the
        # pause count. A streaming STT (Deepgram) sends the current words as they are said, often before the VAD's
        # stop: the words since the caller last started speaking count. (`self._segmented`, set by the base.)
        self._words = ""
        self._stopped_at = 0.0
        self._short = False  # the running silence timer is the short one
        self._paused = False  # the VAD has stopped, and since then the caller has not spoken nor a turn ended
        self._reply_done = asyncio.Event()  # no reply of the agent's is open in the context (see follow_replies)
        self._reply_done.set()

    def follow_replies(self, assistant) -> None:
        """Know when the agent's reply, interrupted or not, is in the context (`assistant`: the call's assistant
        aggregator, whose events say so): a turn that an interruption started after the caller's pause waits for
        that before it ends (see `_after_pause`)."""
        assistant.add_event_handler("on_assistant_turn_started", lambda *_: self._reply_done.clear())
        assistant.add_event_handler("on_assistant_turn_stopped", lambda *_: self._reply_done.set())

    async def handle_user_turn_stopped(self):
        self._paused = False  # a turn a transcript starts later (keypad digits) is not timed from this pause
        await super().handle_user_turn_stopped()

    async def process_frame(self, frame):
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._words = ""
            self._paused = False
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._stopped_at = time.monotonic()
            self._paused = True
            self._short = False  # pipecat starts the long timer on the stop
            if self._segmented:
                self._words = ""
        result = await super().process_frame(frame)
        if isinstance(frame, TranscriptionFrame) and (not self._segmented or not self._vad_user_speaking):
            self._words += " " + frame.text
        if isinstance(frame, (TranscriptionFrame, VADUserStoppedSpeakingFrame)):
            await self._retime()
        return result

    async def _retime(self) -> None:
        """The short silence while the latest words end a sentence, the long one again when words that do not
        follow within it. A streaming STT's final for what the caller said before the pause can come after they
        have started again, and then counts for the new words; the new words' own transcript, once in, undoes
        that."""
        if self._paused and not self._vad_stopped and self._user_speech_timeout_task is not None:
            await self._after_pause()
            return
        if (self._vad_user_speaking or not self._vad_stopped or self._user_speech_wait_done
                or self._user_speech_timeout_task is None):
            return
        short = ends_sentence(self._words)
        if short == self._short:
            return
        self._short = short
        timeout = self._sentence_timeout if short else self._user_speech_timeout
        left = timeout - (time.monotonic() - self._stopped_at)
        await self.task_manager.cancel_task(self._user_speech_timeout_task)
        self._user_speech_timeout_task = None
        if left > 0:
            self._user_speech_timeout_task = self.task_manager.create_task(
                self._user_speech_timeout_handler(left), f"{self}::_user_speech_timeout_handler")
        else:
            self._user_speech_wait_done = True
            await self._maybe_trigger_user_turn_stopped()

    async def _after_pause(self) -> None:
        """A turn that started in the caller's pause, on its transcript: barge-in decides on the words the caller
        said over the agent, and Whisper's come after the VAD's stop. pipecat then times the whole silence from
        the transcript, as if the caller had not been silent since the stop, so a question asked over the agent
        waited ~0.5 s longer for its answer than the same question asked in silence. Here the silence is timed
        from the VAD's stop, as in any other turn, short or long by the words. The turn does not end before the
        reply it interrupted is in the context (and the call's transcript): ending it in the same tick as the
        interruption would put the caller's words before that reply."""
        short = ends_sentence(self._words)
        timeout = self._sentence_timeout if short else self._user_speech_timeout
        logger.debug(f"{self}: words in the caller's pause; the {'short' if short else 'long'} silence counts from "
                     "the VAD's stop, not from them")
        await self.task_manager.cancel_task(self._user_speech_timeout_task)
        self._user_speech_timeout_task = self.task_manager.create_task(
            self._after_pause_handler(timeout), f"{self}::_after_pause_handler")

    async def _after_pause_handler(self, timeout: float) -> None:
        try:
            if not self._reply_done.is_set():
                try:  # bounded: pipecat's own wait, from the transcript, is the most this rule may wait
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
