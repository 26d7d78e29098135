"""The caller's words reach the turn rules in the order they came among the caller's audio, not after all the audio
that piled up behind the VAD meanwhile (pipelines/turns/user_aggregator.py): in a running pipeline against pipecat's
own user aggregator, and in the input queue's order against the other frames waiting there."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    EndFrame,
    InterimTranscriptionFrame,
    TextFrame,
    TranscriptionFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregatorParams
from pipecat.processors.frame_processor import FrameDirection

import pipelines.call_pipeline  # noqa: F401 - installs frame_express, as every call does
from pipelines.stt_frames import NothingMoreHeardFrame
from pipelines.turns.user_aggregator import aggregator_pair
from tests.test_vad_verdict_order import _audio, _running, _waiting

WORDS_AFTER = 4  # the STT's final comes after the 4th audio frame; more audio keeps coming after it


async def _handled(voxlines: bool, frames: int = 12) -> list[str]:
    seen: list[str] = []
    user, worker, task = await _running(voxlines, seen)
    # The caller's audio every 10 ms, faster than the VAD scores it (20 ms a frame): a pile that keeps growing, as
    # on a loaded server while the caller speaks. The STT's words come in the middle of it.
    for i in range(1, frames + 1):
        await user.queue_frame(_audio(i))
        if i == WORDS_AFTER:
            await user.queue_frame(TranscriptionFrame("where are you", "caller", "2026-12-07T00:00:00"))
        await asyncio.sleep(0.01)

    async def all_handled():
        while "words" not in seen or sum(s.startswith("a") for s in seen) < frames:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(all_handled(), 10)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(task, 10)
    return seen


async def test_the_words_are_handled_after_the_audio_before_them_and_before_the_audio_after():
    seen = await _handled(voxlines=True)
    audio = [f"a{i}" for i in range(1, 13)]
    assert [s for s in seen if s.startswith("a")] == audio
    # Its processing task takes the words as the input task hands them on, while that task goes on with the audio:
    # they are handled within a frame of the audio that came before them, long before the pile has drained.
    assert seen.index("a4") < seen.index("words") <= seen.index("a6")


async def test_pipecats_aggregator_hands_the_words_over_after_the_whole_pile():
    """The same stream through pipecat's own aggregator: its words wait until no audio is waiting at all."""
    seen = await _handled(voxlines=False)
    assert seen.index("words") > seen.index("a10")


async def test_the_callers_words_keep_their_place_and_every_other_frame_pipecats():
    user, _ = aggregator_pair(LLMContext(), LLMUserAggregatorParams())
    # Not started: its input task is not idle, so each frame waits in the input queue.
    for frame in (_audio(1), TranscriptionFrame("where", "caller", "t"), TextFrame("data"), _audio(2),
                  InterimTranscriptionFrame("are", "caller", "t"), BotStartedSpeakingFrame(), NothingMoreHeardFrame(),
                  _audio(3)):
        await user.queue_frame(frame)
    await user.queue_frame(TextFrame("upstream"), FrameDirection.UPSTREAM)
    assert _waiting(user) == ["a1", "TranscriptionFrame", "a2", "InterimTranscriptionFrame",
                              "BotStartedSpeakingFrame", "NothingMoreHeardFrame", "a3", "TextFrame", "TextFrame"]


async def test_an_idle_aggregator_takes_the_words_straight_to_processing():
    """With nothing waiting and its input task idle, the words skip the input queue (pipelines/frame_express.py)."""
    user, _ = aggregator_pair(LLMContext(), LLMUserAggregatorParams())
    user._voxline_input_idle = True
    user._FrameProcessor__process_queue = asyncio.Queue()
    await user.queue_frame(TranscriptionFrame("where", "caller", "t"))
    assert _waiting(user) == []
    assert type(user._FrameProcessor__process_queue.get_nowait()[0]).__name__ == "TranscriptionFrame"
