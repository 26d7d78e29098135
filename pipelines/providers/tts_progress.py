"""A TTS service without its per-word progress frames, which nothing in a call reads.

pipecat 1.14's TTS pushes an `AggregatedTextProgressFrame` beside every word it times (`TTSTextFrame`), for word
highlighting in pipecat's RTVI clients; the RTVI observer is their only reader, and calls run without RTVI. Each
one is timed like the word: it waits in the output transport's clock queue until its moment, then crosses the
heard-text gate (held there behind the word's mark) and the assistant aggregator, with each push handed to the
call's observers. On a cloud call that is a frame and about five hops per spoken word, as many as the words
themselves. Here they stop at the TTS. Tied to pipecat 1.14's `TTSService._push_word_frames` pushing them
through `push_frame`, pinned like the other seams.
"""

from __future__ import annotations

from pipecat.frames.frames import AggregatedTextProgressFrame, Frame
from pipecat.processors.frame_processor import FrameDirection


def drop_word_progress(tts) -> None:
    """`tts`: a pipecat TTS service, before its pipeline starts."""
    push_frame = tts.push_frame

    async def push_unless_progress(frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        if isinstance(frame, AggregatedTextProgressFrame):
            return
        await push_frame(frame, direction)

    tts.push_frame = push_unless_progress
