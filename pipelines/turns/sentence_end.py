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
late transcript is kept from ending the turn early by a base class (pipelines/turns/late_transcript.py), and a
turn that starts in the pause is timed from the VAD's stop by another (pipelines/turns/after_pause.py).
"""

from __future__ import annotations

import re
import time

from pipecat.frames.frames import TranscriptionFrame, VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame

from pipelines.turns.after_pause import PauseTimedTurnStop

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


class SentenceEndTurnStop(PauseTimedTurnStop):
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
        self._short = False  # the running silence timer is the short one

    def _pause_timeout(self) -> float:
        return self._sentence_timeout if ends_sentence(self._words) else self._user_speech_timeout

    async def process_frame(self, frame):
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._words = ""
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._short = False  # pipecat starts the long timer on the stop
            if self._segmented:
                self._words = ""
        elif isinstance(frame, TranscriptionFrame) and (not self._segmented or not self._vad_user_speaking):
            self._words += " " + frame.text  # before the base class, which may time a turn by them
        result = await super().process_frame(frame)
        if isinstance(frame, (TranscriptionFrame, VADUserStoppedSpeakingFrame)):
            await self._retime()
        return result

    async def _final_landed(self) -> None:
        """The words whose final the turn's end waited for (pipelines/turns/heard_silence.py) may not end a
        sentence, and the short silence that was up was for the words before them: the long one then runs on."""
        left = self._user_speech_timeout - (time.monotonic() - self._stopped_at)
        if not self._vad_stopped or ends_sentence(self._words) or left <= 0:
            return await super()._final_landed()
        await self._drop_hold()
        self._short = False
        await self._run_silence(left)

    async def _run_silence(self, left: float) -> None:
        """pipecat's silence timer, restarted to run out `left` s from now."""
        if self._user_speech_timeout_task is not None:
            await self.task_manager.cancel_task(self._user_speech_timeout_task)
        self._user_speech_wait_done = False
        self._user_speech_timeout_task = self.task_manager.create_task(
            self._user_speech_timeout_handler(left), f"{self}::_user_speech_timeout_handler")

    async def _retime(self) -> None:
        """The short silence while the latest words end a sentence, the long one again when words that do not
        follow within it. A streaming STT's final for what the caller said before the pause can come after they
        have started again, and then counts for the new words; the new words' own transcript, once in, undoes
        that."""
        # A turn that started in the pause (`not self._vad_stopped`) is timed by the base class.
        if (self._vad_user_speaking or not self._vad_stopped or self._user_speech_wait_done
                or self._user_speech_timeout_task is None):
            return
        short = ends_sentence(self._words)
        if short == self._short:
            return
        self._short = short
        timeout = self._sentence_timeout if short else self._user_speech_timeout
        left = timeout - (time.monotonic() - self._stopped_at)
        if left > 0:
            await self._run_silence(left)
            return
        await self.task_manager.cancel_task(self._user_speech_timeout_task)
        self._user_speech_timeout_task = None
        self._user_speech_wait_done = True
        await self._maybe_trigger_user_turn_stopped()
