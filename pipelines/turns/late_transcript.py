"""End-of-turn rules that do not take a segmented STT's late transcript for the STT being done.

Whisper transcribes a segment after the VAD hears a pause, so the transcript of the words before a short pause can
arrive once the caller has gone on. pipecat 1.14's stop strategies take any finalized transcript as "the STT has
nothing more to send" (Whisper's are always finalized), even one that arrives while the caller speaks. At the next
pause they then skip their wait for the STT and end the turn on the old words alone when the new words' transcript
takes longer than the silence timer: a CI run stored "Hello?" as a caller's turn and "I would like ... a table ..."
as a second one (0.54 s of Whisper against a 0.5 s timer). Such a transcript still joins the turn; only the flags
that say the STT is done are kept as they were.

Every stop rule the pipeline factory builds is one of these (pipelines/architectures/pipeline.py `_stop_strategy`).
Tied to pipecat 1.14's `_vad_user_speaking` and `_transcript_finalized` (both strategies) and `_stt_wait_done`
(the silence timeout's).
"""

from __future__ import annotations

from pipecat.frames.frames import TranscriptionFrame
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy, TurnAnalyzerUserTurnStopStrategy


class _LateTranscriptGuard:
    _DONE_FLAGS: tuple[str, ...]  # the strategy's "the STT is done" state

    def __init__(self, *, segmented_stt: bool, **kwargs):
        super().__init__(**kwargs)
        self._segmented = segmented_stt

    async def process_frame(self, frame):
        if not (self._segmented and self._vad_user_speaking and isinstance(frame, TranscriptionFrame)):
            return await super().process_frame(frame)
        kept = [getattr(self, flag) for flag in self._DONE_FLAGS]
        result = await super().process_frame(frame)
        for flag, value in zip(self._DONE_FLAGS, kept):
            setattr(self, flag, value)
        return result


class SilenceTurnStop(_LateTranscriptGuard, SpeechTimeoutUserTurnStopStrategy):
    """pipecat's silence timeout (`user_speech_timeout`, from the VAD's stop), with the late-transcript guard."""

    _DONE_FLAGS = ("_transcript_finalized", "_stt_wait_done")


class SmartTurnStop(_LateTranscriptGuard, TurnAnalyzerUserTurnStopStrategy):
    """pipecat's turn-analyzer rule (`turn_analyzer`), with the late-transcript guard."""

    _DONE_FLAGS = ("_transcript_finalized",)
