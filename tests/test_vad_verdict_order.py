"""The VAD's verdicts are handled right after the caller audio they were made from, not behind the audio that piled
up while it was scored (pipelines/turns/user_aggregator.py): in a running pipeline against pipecat's own user
aggregator, and in the input queue's order against the other frames waiting there."""

from __future__ import annotations

import asyncio
import heapq
import inspect

import pytest
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    EndFrame,
    InputAudioRawFrame,
    TextFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregator,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorQueue
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_start.base_user_turn_start_strategy import (
    BaseUserTurnStartStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from pipelines.turns.user_aggregator import aggregator_pair
from tests.pinned_source import statements
from tests.pipelines import running

FRAMES = 12
SPEAKING = range(3, 8)  # the frames (1-based) after which the VAD hears speech; QUIET from the 8th


class _SlowVAD(VADAnalyzer):
    """Scores each 40 ms frame in 20 ms of wall time, as a loaded server's round trip to the VAD's thread does, and
    hears speech after frames 3 to 7: its verdicts are known in advance, the order they are handled in is tested."""

    def __init__(self):
        super().__init__(sample_rate=8000, params=VADParams())
        self.frames = 0

    def num_frames_required(self) -> int:
        return 256

    def voice_confidence(self, buffer: bytes) -> float:
        return 1.0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        await asyncio.sleep(0.02)
        self.frames += 1
        return VADState.SPEAKING if self.frames in SPEAKING else VADState.QUIET


class _Seen(BaseUserTurnStartStrategy):
    """Writes down the caller's audio, the VAD's verdicts and the caller's words in the order the user aggregator
    hands them to its turn rules."""

    def __init__(self, seen: list[str]):
        super().__init__()
        self.seen = seen

    async def process_frame(self, frame) -> ProcessFrameResult:
        if isinstance(frame, InputAudioRawFrame):
            self.seen.append(f"a{frame.audio[0]}")
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self.seen.append("started")
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self.seen.append("stopped")
        elif isinstance(frame, TranscriptionFrame):
            self.seen.append("words")  # tests/test_words_in_order.py
        return ProcessFrameResult.CONTINUE


def _audio(n: int) -> InputAudioRawFrame:
    return InputAudioRawFrame(audio=bytes([n]) * 640, sample_rate=8000, num_channels=1)


async def _running(voxlines: bool, seen: list[str]):
    """A user aggregator, voxline's or pipecat's, with the slow VAD and a `_Seen` rule, running: (it, its worker,
    the worker's task)."""
    params = LLMUserAggregatorParams(vad_analyzer=_SlowVAD(),
                                     user_turn_strategies=UserTurnStrategies(start=[_Seen(seen)], stop=[]))
    if voxlines:
        user, assistant = aggregator_pair(LLMContext(), params)
    else:
        pair = LLMContextAggregatorPair(LLMContext(), user_params=params)
        user, assistant = pair.user(), pair.assistant()
    worker, _, task = await running(user, assistant)
    return user, worker, task


async def _handled(voxlines: bool) -> list[str]:
    seen: list[str] = []
    _, worker, task = await _running(voxlines, seen)
    # A burst of the caller's audio, as the aggregator gets it when its frames pile up behind the VAD.
    await worker.queue_frames([_audio(i) for i in range(1, FRAMES + 1)])

    async def all_handled():
        while seen.count("stopped") < 1 or sum(s.startswith("a") for s in seen) < FRAMES:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(all_handled(), 10)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(task, 10)
    return seen


async def test_a_verdict_is_handled_right_after_the_audio_it_was_made_from():
    seen = await _handled(voxlines=True)
    audio = [f"a{i}" for i in range(1, FRAMES + 1)]
    assert [s for s in seen if s.startswith("a")] == audio  # the audio itself keeps its order
    # SPEAKING after frame 3, QUIET after frame 8: each verdict comes between that frame and the next.
    assert seen == audio[:3] + ["started"] + audio[3:8] + ["stopped"] + audio[8:]


async def test_pipecats_aggregator_hands_a_verdict_the_whole_backlog_first():
    """The same burst through pipecat's own aggregator: its verdicts wait behind the audio queued meanwhile."""
    seen = await _handled(voxlines=False)
    assert seen.index("started") > seen.index("a4") + 1
    assert seen.index("stopped") > seen.index("a9") + 1


def _waiting(user) -> list[str]:
    """The input queue's frames in the order its task takes them."""
    heap = list(user._FrameProcessor__input_queue._queue)
    order = []
    while heap:
        frame = heapq.heappop(heap)[2][0]
        order.append(f"a{frame.audio[0]}" if isinstance(frame, InputAudioRawFrame) else type(frame).__name__)
    return order


async def _queue(user, *frames) -> None:
    for frame in frames:
        await user.queue_frame(frame)  # not started: each waits in the input queue


async def test_a_verdict_goes_ahead_of_waiting_audio_only():
    user, _ = aggregator_pair(LLMContext(), LLMUserAggregatorParams())
    await _queue(user, BotStartedSpeakingFrame(), _audio(1), TextFrame("data"), BotStartedSpeakingFrame(), _audio(2))
    await user._queued_broadcast_frame(VADUserStartedSpeakingFrame, start_secs=0.1)
    await user._queued_broadcast_frame(VADUserStoppedSpeakingFrame, stop_secs=0.2)
    # What came before the waiting audio stays ahead; verdicts keep their own order; data frames are last, as ever.
    assert _waiting(user) == ["BotStartedSpeakingFrame", "VADUserStartedSpeakingFrame",
                              "VADUserStoppedSpeakingFrame", "a1", "BotStartedSpeakingFrame", "a2", "TextFrame"]
    await _queue(user, _audio(3))
    await user._queued_broadcast_frame(VADUserStartedSpeakingFrame, start_secs=0.1)
    assert _waiting(user)[:4] == ["BotStartedSpeakingFrame", "VADUserStartedSpeakingFrame",
                                  "VADUserStoppedSpeakingFrame", "VADUserStartedSpeakingFrame"]


async def test_with_no_audio_waiting_a_verdict_is_queued_as_pipecat_queues_it():
    user, _ = aggregator_pair(LLMContext(), LLMUserAggregatorParams())
    await _queue(user, BotStartedSpeakingFrame(), TextFrame("data"))
    await user._queued_broadcast_frame(VADUserStartedSpeakingFrame, start_secs=0.1)
    assert _waiting(user) == ["BotStartedSpeakingFrame", "VADUserStartedSpeakingFrame", "TextFrame"]


@pytest.mark.parametrize("queue_ahead", [True, False])
async def test_the_verdict_goes_upstream_too(monkeypatch, queue_ahead):
    user, _ = aggregator_pair(LLMContext(), LLMUserAggregatorParams())
    if queue_ahead:
        await _queue(user, _audio(1))
    pushed = []

    async def push_frame(self, frame, direction=FrameDirection.DOWNSTREAM):
        pushed.append((type(frame).__name__, direction))

    monkeypatch.setattr(LLMUserAggregator, "push_frame", push_frame)
    await user._queued_broadcast_frame(VADUserStartedSpeakingFrame, start_secs=0.1)
    assert pushed == [("VADUserStartedSpeakingFrame", FrameDirection.UPSTREAM)]
    assert _waiting(user)[0] == "VADUserStartedSpeakingFrame"


async def test_pipecats_queue_and_verdicts_are_what_the_reordering_reads():
    """If pipecat 1.14's queue or its queued verdicts changed shape, the reordering would be stale: the test says so."""
    queue = FrameProcessorQueue()
    await queue.put((_audio(1), FrameDirection.DOWNSTREAM, None))
    await queue.put((TextFrame("data"), FrameDirection.DOWNSTREAM, None))
    assert [entry[:2] for entry in sorted(queue._queue)] == [(queue.SYSTEM_PRIORITY, 1), (queue.DEFAULT_PRIORITY, 2)]
    assert statements(LLMUserAggregator._queued_broadcast_frame) == [
        "    await self.queue_frame(frame_cls(**kwargs))",
        "    await self.push_frame(frame_cls(**kwargs), FrameDirection.UPSTREAM)",
    ]
    source = inspect.getsource(LLMUserAggregator)
    assert "async def _on_vad_speech_started" in source and "async def _on_vad_speech_stopped" in source
    assert source.count("await self._queued_broadcast_frame(\n            VADUserSt") == 2
