"""A TTS service hands the output a reply's audio as the output needs it, not as fast as the provider sends it.

Providers send a reply faster than real time (the benchmark's emulators all at once), and pipecat 1.14's TTS
pushes each chunk on as soon as it has it: through the output transport's two queues, cut into the carrier's
chunks, into the media sender's queue, where it waits to be paced out. Two costs follow. A reply's whole audio
crosses the pipeline in one lump of the event loop's time, and every other call on the loop waits behind it; and a
caller who interrupts throws away audio that had already made the whole trip. Here the next audio chunk of the
playing context is taken only while the output holds less than `AHEAD_SECS` still to send; the rest waits in the
context's queue, where an interruption drops it with no further work.

Word timestamps and other items pass at once, in their order; the words' times count from the first chunk, which
never waits (the output is empty then). The measure is the media senders' queues and the audio the TTS has let
through that has not reached the output yet: without the second, under load the TTS let a chunk through every loop
turn while each took a few turns to arrive, and ran ~0.4 s past the lead. While a barge-in holds the output,
nothing drains and the TTS waits with it. Tied to pipecat 1.14's `AudioContextManager.get` (see
tts_contexts.py) and the output's `_media_senders` / `_audio_queue`, pinned like the other seams.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipecat.frames.frames import Frame, OutputAudioRawFrame, TTSAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection

# Far more than a loaded loop delays a chunk's trip to the output (tens of ms), and well over pipecat's 0.35 s
# no-audio fallback, which would otherwise call the agent stopped mid-reply.
AHEAD_SECS = 0.5
MIN_WAIT_SECS = 0.04  # one chunk: a held output is looked at no more often than this


def queued_secs(output) -> float:
    """Audio the output transport has queued and not yet written (its media senders' queues, which also hold the
    frames that must follow the audio: those are not counted)."""
    return sum(_secs(frame) for sender in output._media_senders.values()
               for frame in sender._audio_queue._queue if isinstance(frame, OutputAudioRawFrame))


def _secs(frame: OutputAudioRawFrame) -> float:
    return len(frame.audio) / (2 * frame.sample_rate * frame.num_channels) if frame.sample_rate else 0.0


class OutputBacklog:
    """The audio between a TTS and the carrier: what the output has queued, and what the TTS has handed on that
    has not reached the output yet (a few queue hops; under load a loop turn each, while the TTS could hand on a
    chunk every turn)."""

    def __init__(self, output):
        self._output = output
        self._released = 0.0  # by the TTS, seconds of audio
        self._landed = 0.0  # at the output
        process_frame = output.process_frame

        async def count_landed(frame: Frame, direction: FrameDirection):
            if isinstance(frame, OutputAudioRawFrame) and direction is FrameDirection.DOWNSTREAM:
                self._landed += _secs(frame)
            await process_frame(frame, direction)

        output.process_frame = count_landed

    def released(self, frame: OutputAudioRawFrame) -> None:
        self._released += _secs(frame)

    def forget_in_flight(self) -> None:
        """A new reply: what an interruption dropped on its way will never land."""
        self._released = self._landed

    def secs(self) -> float:
        return queued_secs(self._output) + max(0.0, self._released - self._landed)


def pace_to_output(tts, output, ahead_secs: float = AHEAD_SECS) -> None:
    """`tts`: a pipecat TTS service, before its pipeline starts (services without audio contexts are left alone);
    `output`: the call's output transport."""
    manager = getattr(tts, "_audio_context_manager", None)
    if manager is None:
        return
    get = manager.get
    backlog = OutputBacklog(output)
    playing = [None]

    async def get_when_needed(context_id: str, timeout: float) -> Any:
        item = await get(context_id, timeout)
        if isinstance(item, TTSAudioRawFrame):
            if context_id != playing[0]:
                playing[0] = context_id
                backlog.forget_in_flight()
            while (excess := backlog.secs() - ahead_secs) > 0:
                await asyncio.sleep(max(excess, MIN_WAIT_SECS))
            backlog.released(item)
        return item

    manager.get = get_when_needed
