"""A TTS hands the output a reply's audio as the output needs it (pipelines/providers/tts_pacing.py): pipecat's own
AudioContextManager and TTS service, a trimmed Twilio output paced like a call's. Every chunk still reaches the
carrier in order; the output never holds much more than AHEAD_SECS; an interruption leaves the unneeded rest of a
reply unpushed; and a call's pipeline has its TTS paced that way."""

from __future__ import annotations

import asyncio
import audioop
import base64
import json
from collections.abc import AsyncGenerator

import pytest
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.utils.context.audio_context_manager import AudioContextManager
from pipecat.utils.frame_queue import FrameQueue
from pipecat.workers.runner import WorkerRunner
from starlette.websockets import WebSocketState

from config.agent import AgentConfig
from config.settings import Settings
from pipelines.factory import build_call_pipeline
from pipelines.providers.registry import BuildContext
from pipelines.providers.tts_contexts import read_inline
from pipelines.providers.tts_pacing import AHEAD_SECS, pace_to_output, queued_secs
from telephony import audio_out
from telephony.pacing import LeadPacer
from telephony.twilio.serializer import StreamEvents, TwilioMediaSerializer

RATE = 8000
CHUNK_SECS = 0.04
PIECE = int(RATE * 0.1) * 2  # the provider's pieces: 100 ms of 16-bit audio


class _Sender:
    def __init__(self):
        self._audio_queue = FrameQueue()


class _Output:
    """What the pacing reads of an output transport."""

    audio_chunk_size = int(RATE * CHUNK_SECS) * 2

    def __init__(self):
        self._media_senders = {None: _Sender()}

    async def process_frame(self, frame, direction) -> None:
        self.queue.put_nowait(frame)

    @property
    def queue(self) -> FrameQueue:
        return self._media_senders[None]._audio_queue


class _Holder:
    def __init__(self):
        self._audio_context_manager = AudioContextManager()


def _chunk() -> OutputAudioRawFrame:
    return OutputAudioRawFrame(bytes(_Output.audio_chunk_size), RATE, 1)


def _audio(i: int) -> TTSAudioRawFrame:
    return TTSAudioRawFrame(bytes([i]) * PIECE, RATE, 1)


async def test_audio_waits_until_the_output_is_below_the_lead_and_other_items_do_not():
    holder, output = _Holder(), _Output()
    read_inline(holder)
    pace_to_output(holder, output)
    manager = holder._audio_context_manager
    await manager.create("c1")
    for _ in range(25):  # 1 s queued at the output
        output.queue.put_nowait(_chunk())
    await manager.append("c1", "a word timestamp")
    await manager.append("c1", _audio(1))

    assert await asyncio.wait_for(manager.get("c1", timeout=1.0), 0.05) == "a word timestamp"

    async def play():  # the output writes a chunk every 40 ms
        while not output.queue.empty():
            await asyncio.sleep(CHUNK_SECS)
            output.queue.get_nowait()

    playing = asyncio.create_task(play())
    item = await manager.get("c1", timeout=1.0)
    left = queued_secs(output)
    await playing
    assert isinstance(item, TTSAudioRawFrame)
    assert AHEAD_SECS - 2 * CHUNK_SECS <= left <= AHEAD_SECS, left  # taken once the output fell to the lead


async def test_a_held_output_keeps_the_audio_back_until_it_drains():
    holder, output = _Holder(), _Output()
    pace_to_output(holder, output)
    manager = holder._audio_context_manager
    await manager.create("c1")
    for _ in range(20):  # 0.8 s queued, and nothing plays: a barge-in hold
        output.queue.put_nowait(_chunk())
    output.queue.put_nowait(TTSStoppedFrame())  # not audio: not counted
    await manager.append("c1", _audio(1))
    getting = asyncio.create_task(manager.get("c1", timeout=0.1))  # the context's own deadline does not apply
    await asyncio.sleep(0.4)
    assert not getting.done()
    while queued_secs(output) > AHEAD_SECS:
        output.queue.get_nowait()
    assert isinstance(await asyncio.wait_for(getting, 1.0), TTSAudioRawFrame)


class _Socket:
    client_state = application_state = WebSocketState.CONNECTED

    def __init__(self):
        self.messages: list[dict] = []

    async def send_text(self, data: str) -> None:
        self.messages.append(json.loads(data))

    async def receive(self) -> dict:
        await asyncio.Event().wait()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.client_state = self.application_state = WebSocketState.DISCONNECTED

    def ulaw(self) -> bytes:
        return b"".join(base64.b64decode(m["media"]["payload"]) for m in self.messages if m["event"] == "media")


class _FastTTS(TTSService):
    """A provider that sends the whole reply at once, in 100 ms pieces that each differ."""

    def __init__(self, pieces: int):
        super().__init__(push_start_frame=True, push_stop_frames=True,
                         settings=TTSSettings(model=None, voice="v", language=None))
        self.audio = [int(300 + 50 * i).to_bytes(2, "little", signed=True) * (PIECE // 2) for i in range(pieces)]

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        for piece in self.audio:
            yield TTSAudioRawFrame(piece, RATE, 1, context_id=context_id)


class _Count(FrameProcessor):
    def __init__(self):
        super().__init__()
        self.audio = 0

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.audio += 1
        await self.push_frame(frame, direction)


class _Speaking:
    def __init__(self, pieces: int, paced: bool):
        self.socket = _Socket()
        serializer = TwilioMediaSerializer("MZ" + "0" * 32, StreamEvents())
        transport = FastAPIWebsocketTransport(self.socket, FastAPIWebsocketParams(
            audio_out_enabled=True, audio_out_10ms_chunks=4, audio_out_end_silence_secs=0, serializer=serializer))
        self.output = transport.output()
        serializer.bind(self.output)
        LeadPacer(self.output)
        audio_out.trim(self.output)
        self.tts = _FastTTS(pieces)
        read_inline(self.tts)
        if paced:
            pace_to_output(self.tts, self.output)
        self.count = _Count()
        self.worker = PipelineWorker(Pipeline([self.tts, self.count, self.output]),
                                     params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
                                     enable_rtvi=False, enable_turn_tracking=False)
        self.most_queued = 0.0

    async def __aenter__(self) -> _Speaking:
        runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
        await runner.add_workers(self.worker)
        self._running = asyncio.create_task(runner.run())
        self._watch = asyncio.create_task(self._watch_queue())
        await asyncio.sleep(0.2)
        return self

    async def __aexit__(self, *exc) -> None:
        self._watch.cancel()
        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self._running, 10)

    async def _watch_queue(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            self.most_queued = max(self.most_queued, queued_secs(self.output))


@pytest.mark.parametrize("paced", [True, False])
async def test_every_piece_reaches_the_carrier_in_order_with_the_output_kept_near_the_lead(paced):
    async with _Speaking(pieces=12, paced=paced) as call:  # 1.2 s
        await call.worker.queue_frame(TTSSpeakFrame("Twelve Main Street."))
        expected = audioop.lin2ulaw(b"".join(call.tts.audio), 2)
        for _ in range(300):
            if len(call.socket.ulaw()) >= len(expected):
                break
            await asyncio.sleep(0.01)
    assert call.socket.ulaw()[:len(expected)] == expected
    if paced:  # the lead, and the last piece let through (0.1 s)
        assert call.most_queued <= AHEAD_SECS + 0.1, call.most_queued
    else:  # pipecat's own: the whole reply lands in the output at once
        assert call.most_queued >= 1.0, call.most_queued


@pytest.mark.parametrize("paced", [True, False])
async def test_an_interruption_leaves_the_rest_of_the_reply_unpushed(paced):
    async with _Speaking(pieces=40, paced=paced) as call:  # 4 s
        await call.worker.queue_frame(TTSSpeakFrame("Twelve Main Street."))
        for _ in range(300):
            if call.socket.ulaw():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        await call.worker.queue_frame(InterruptionFrame())
        await asyncio.sleep(0.2)
        pushed = call.count.audio
        sent = len(call.socket.ulaw())
    if paced:  # ~0.5 s played, the lead queued and a chunk or two on the way: well under half of 4 s
        assert pushed <= 15, pushed
    else:
        assert pushed == 40
    assert sent < 40 * PIECE // 2 // 2  # the caller never got the whole reply either way


def test_a_calls_tts_is_paced_to_its_output():
    agent = AgentConfig.model_validate({
        "name": "cloud", "system_prompt": "Be brief.", "transcriber": {"provider": "deepgram"},
        "llm": {"provider": "openai", "model": "gpt-4o-mini"}, "tts": {"provider": "cartesia"}})
    settings = Settings(deepgram_api_key="k", openai_api_key="k", cartesia_api_key="k")
    transport = FastAPIWebsocketTransport(_Socket(), FastAPIWebsocketParams())
    built = build_call_pipeline(agent, transport, BuildContext(agent=agent, settings=settings))
    (tts,) = [p for p in built.pipeline.processors if isinstance(p, TTSService)]
    assert tts._audio_context_manager.get.__qualname__.startswith("pace_to_output")
