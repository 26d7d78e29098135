"""The call's transports, trimmed (telephony/audio_out.py, telephony/audio_in.py). Out: every chunk still reaches the
carrier, in order, from the sender's one task; a frame is handled in the task that pushes it; written audio goes
no further; the bot's speaking frames, the no-audio fallback and the write deadline work as in pipecat. In: every
frame of the caller's audio reaches the pipeline in order, without a task per frame."""

from __future__ import annotations

import asyncio
import audioop
import base64
import contextlib
import json

import pytest
from pipecat.frames.frames import (
    BotSpeakingFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    ErrorFrame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner
from starlette.websockets import WebSocketState

from telephony import audio_in, audio_out
from telephony.twilio.serializer import StreamEvents, TwilioMediaSerializer
from tests.tasks import tasks_made

CHUNK = 320  # 20 ms at 8 kHz, 16-bit


class _Socket:
    """The peer: what pipecat's FastAPI client uses of a starlette WebSocket. `stall_after`: messages it takes
    before it stops reading (its sends then never return)."""

    client_state = application_state = WebSocketState.CONNECTED

    def __init__(self, stall_after: int | None = None):
        self.messages: list[dict] = []
        self._stall_after = stall_after
        self.incoming: asyncio.Queue[str] = asyncio.Queue()

    async def send_text(self, data: str) -> None:
        if self._stall_after is not None and len(self.messages) >= self._stall_after:
            await asyncio.Event().wait()
        self.messages.append(json.loads(data))

    async def send_bytes(self, data: bytes) -> None:
        raise AssertionError("Twilio's stream is text")

    async def receive(self) -> dict:
        return {"type": "websocket.receive", "text": await self.incoming.get()}

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.client_state = self.application_state = WebSocketState.DISCONNECTED

    def ulaw(self) -> bytes:
        return b"".join(base64.b64decode(m["media"]["payload"]) for m in self.messages if m["event"] == "media")


class _Seen(FrameProcessor):
    def __init__(self, direction: FrameDirection):
        super().__init__()
        self.frames: list = []
        self._direction = direction

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if direction is self._direction:
            self.frames.append(frame)
        await self.push_frame(frame, direction)

    def named(self) -> list[str]:
        return [type(f).__name__ for f in self.frames]


class _Call:
    def __init__(self, socket: _Socket, *, trimmed: bool = True, write_timeout: float = 10.0, direct: bool = False):
        self.socket = socket
        serializer = self.serializer = TwilioMediaSerializer("MZ" + "0" * 32, StreamEvents())
        transport = FastAPIWebsocketTransport(socket, FastAPIWebsocketParams(
            audio_in_enabled=True, audio_out_enabled=True, audio_out_10ms_chunks=2, audio_out_end_silence_secs=0,
            audio_out_write_timeout_secs=write_timeout, serializer=serializer))
        self.output = transport.output()
        serializer.bind(self.output)
        self.input = transport.input()
        if trimmed:
            audio_out.trim(self.output)
            audio_in.trim(self.input)
        self.takers: list = []  # what audio_in.direct handed the socket's protocol, in turn (None: taken back)
        if direct:
            audio_in.direct(self.input, self.takers.append, serializer)
        self.upstream, self.downstream = _Seen(FrameDirection.UPSTREAM), _Seen(FrameDirection.DOWNSTREAM)
        self.worker = PipelineWorker(Pipeline([self.input, self.upstream, self.output, self.downstream]),
                                     params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
                                     enable_rtvi=False, enable_turn_tracking=False)
        self._counting = contextlib.ExitStack()

    async def __aenter__(self) -> _Call:
        self.tasks = self._counting.enter_context(tasks_made())
        runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
        await runner.add_workers(self.worker)
        self._running = asyncio.create_task(runner.run())
        await asyncio.sleep(0.2)
        return self

    async def __aexit__(self, *exc) -> None:
        self._counting.close()
        if not self._running.done():
            await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self._running, 10)

    async def until(self, check, timeout: float = 5.0) -> None:
        async def poll():
            while not check():
                await asyncio.sleep(0.01)
        await asyncio.wait_for(poll(), timeout)


def _speech(chunks: int) -> bytes:
    """A rising tone, so every 20 ms chunk differs: order and loss both show in the μ-law that arrives."""
    return b"".join(int(400 + 40 * i).to_bytes(2, "little", signed=True) * (CHUNK // 2) for i in range(chunks))


async def test_every_chunk_reaches_the_carrier_in_order_and_goes_no_further():
    pcm = _speech(25)
    async with _Call(_Socket()) as call:
        for i in range(0, len(pcm), CHUNK * 5):  # the TTS hands over 100 ms at a time
            await call.worker.queue_frame(TTSAudioRawFrame(audio=pcm[i:i + CHUNK * 5], sample_rate=8000,
                                                           num_channels=1))
        await call.worker.queue_frame(TTSStoppedFrame())
        await call.until(lambda: "BotStoppedSpeakingFrame" in call.downstream.named())
    media = [m for m in call.socket.messages if m["event"] == "media"]
    assert len(media) == 25 and all(len(base64.b64decode(m["media"]["payload"])) == 160 for m in media)
    assert call.socket.ulaw() == audioop.lin2ulaw(pcm, 2)
    seen = call.downstream.named()
    assert not any(isinstance(f, OutputAudioRawFrame) for f in call.downstream.frames), seen
    assert seen.index("BotStartedSpeakingFrame") < seen.index("BotStoppedSpeakingFrame")
    assert "BotStartedSpeakingFrame" in call.upstream.named() and "BotStoppedSpeakingFrame" in call.upstream.named()


async def test_pipecats_own_output_hands_written_audio_on():
    """The baseline the trim changes: without it, each written chunk is pushed on downstream."""
    async with _Call(_Socket(), trimmed=False) as call:
        await call.worker.queue_frame(TTSAudioRawFrame(audio=_speech(5), sample_rate=8000, num_channels=1))
        await call.until(lambda: len(call.socket.messages) >= 5)
        await call.until(lambda: sum(isinstance(f, OutputAudioRawFrame) for f in call.downstream.frames) == 5)


@pytest.mark.parametrize("trimmed", [True, False])
async def test_the_bot_speaking_heartbeat_comes_once_a_second(trimmed):
    """2.4 s of agent audio, sent at the line's pace: pipecat broadcasts a BotSpeakingFrame every 0.2 s, the
    trimmed output once a second, starting with the first chunk (pipecat's idle watch still sees the agent talk)."""
    async with _Call(_Socket(), trimmed=trimmed) as call:
        await call.worker.queue_frame(TTSAudioRawFrame(audio=_speech(120), sample_rate=8000, num_channels=1))
        await call.until(lambda: len(call.socket.messages) >= 120, timeout=10)
        await call.worker.queue_frame(TTSStoppedFrame())
        await call.until(lambda: "BotStoppedSpeakingFrame" in call.downstream.named())
    beats = {direction: [f for f in seen.frames if isinstance(f, BotSpeakingFrame)]
             for direction, seen in (("up", call.upstream), ("down", call.downstream))}
    if trimmed:
        assert 2 <= len(beats["up"]) == len(beats["down"]) <= 3, beats
    else:
        assert len(beats["up"]) >= 10 and len(beats["down"]) >= 10, beats


@pytest.mark.parametrize("trimmed", [True, False])
async def test_no_task_is_made_per_chunk(trimmed):
    async with _Call(_Socket(), trimmed=trimmed) as call:
        await call.worker.queue_frame(TTSAudioRawFrame(audio=_speech(20), sample_rate=8000, num_channels=1))
        await call.until(lambda: len(call.socket.messages) >= 20)
        per_chunk = [t for t in call.tasks if t in ("FastAPIWebsocketOutputTransport.write_audio_frame", "Queue.get")]
    if trimmed:
        assert per_chunk == []
    else:  # what pipecat's `asyncio.wait_for` around the queue and the write costs: a task each, per chunk
        assert len(per_chunk) >= 40, call.tasks


@pytest.mark.parametrize("trimmed", [True, False])
async def test_a_frame_pushed_to_the_output_is_handled_in_the_pushing_task(trimmed):
    """Trimmed, the output is in pipecat's direct mode: when the TTS's push returns, the chunks are already in the
    media sender's queue. pipecat's output has only queued the frame for its own input task by then."""
    async with _Call(_Socket(), trimmed=trimmed) as call:
        sender = next(iter(call.output._media_senders.values()))
        await call.upstream.push_frame(TTSAudioRawFrame(audio=_speech(4), sample_rate=8000, num_channels=1))
        handed_over = sender._audio_queue.qsize()  # the loop has not turned since the push
        await call.until(lambda: len(call.socket.messages) >= 4)
    assert call.socket.ulaw() == audioop.lin2ulaw(_speech(4), 2)
    assert handed_over == (4 if trimmed else 0)


async def test_the_bot_stops_speaking_when_audio_stops_without_a_tts_stop(monkeypatch):
    """pipecat's fallback for a TTS that never says it stopped, kept by the trimmed sender (3 s in pipecat)."""
    monkeypatch.setattr(audio_out, "BOT_VAD_STOP_FALLBACK_SECS", 0.3)
    async with _Call(_Socket()) as call:
        await call.worker.queue_frame(TTSAudioRawFrame(audio=_speech(5), sample_rate=8000, num_channels=1))
        await call.until(lambda: any(isinstance(f, BotStartedSpeakingFrame) for f in call.downstream.frames))
        await call.until(lambda: any(isinstance(f, BotStoppedSpeakingFrame) for f in call.downstream.frames),
                         timeout=1.5)
        # and speaks again, on the same sender, when audio comes back
        await call.worker.queue_frame(TTSAudioRawFrame(audio=_speech(5), sample_rate=8000, num_channels=1))
        await call.until(lambda: len(call.socket.messages) >= 10)
        await call.until(lambda: call.downstream.named().count("BotStartedSpeakingFrame") == 2)


async def test_a_peer_that_stops_reading_is_written_off_after_the_deadline():
    async with _Call(_Socket(stall_after=3), write_timeout=0.3) as call:
        await call.worker.queue_frame(TTSAudioRawFrame(audio=_speech(10), sample_rate=8000, num_channels=1))
        await call.until(lambda: any(isinstance(f, ErrorFrame) for f in call.upstream.frames), timeout=3.0)
        error = next(f for f in call.upstream.frames if isinstance(f, ErrorFrame))
        assert "stopped reading" in error.error and "0.3s" in error.error
        assert not call.output.is_usable
        assert len(call.socket.messages) == 3


@pytest.mark.parametrize("trimmed", [True, False])
async def test_the_callers_audio_arrives_in_order_without_a_task_per_frame(trimmed):
    pcm = _speech(30)
    ulaw = audioop.lin2ulaw(pcm, 2)
    async with _Call(_Socket(), trimmed=trimmed) as call:
        for i in range(0, len(ulaw), 160):  # Twilio's 20 ms messages
            call.socket.incoming.put_nowait(json.dumps({"event": "media", "streamSid": "MZ" + "0" * 32, "media": {
                "track": "inbound", "payload": base64.b64encode(ulaw[i:i + 160]).decode()}}))
        def frames():
            return [f for f in call.downstream.frames if isinstance(f, InputAudioRawFrame)]

        await call.until(lambda: len(frames()) == 15)  # 40 ms frames
        per_frame = [t for t in call.tasks if t == "Queue.get"]
    assert b"".join(f.audio for f in frames()) == audioop.ulaw2lin(ulaw, 2)
    if trimmed:
        assert per_frame == []
    else:  # pipecat's `asyncio.wait_for` around the queue: a task per frame
        assert len(per_frame) >= 15, call.tasks


async def test_media_taken_directly_reaches_the_pipeline_in_order_and_the_rest_goes_through_pipecats_loop():
    """audio_in.direct: the protocol's taker makes each media message into the frames pipecat's loop would have (in
    order, 40 ms each, its counters kept), takes an unreadable message (warned, nothing pushed), leaves every other
    message to the loop, and is taken back when the loop ends."""
    pcm = _speech(30)
    ulaw = audioop.lin2ulaw(pcm, 2)
    media = [json.dumps({"event": "media", "streamSid": "MZ" + "0" * 32, "media": {
        "track": "inbound", "payload": base64.b64encode(ulaw[i:i + 160]).decode()}}) for i in range(0, len(ulaw), 160)]
    dtmf = json.dumps({"event": "dtmf", "streamSid": "MZ" + "0" * 32, "dtmf": {"digit": "5"}})
    async with _Call(_Socket(), direct=True) as call:
        await call.until(lambda: len(call.takers) == 1)
        take = call.takers[0]
        assert all(take(text) for text in media[:10])
        assert take("{not json") is True
        assert take(dtmf) is False
        call.socket.incoming.put_nowait(dtmf)  # what the protocol does with a message not taken
        assert all(take(text) for text in media[10:])

        def frames():
            return [f for f in call.downstream.frames if isinstance(f, InputAudioRawFrame)]

        await call.until(lambda: len(frames()) == 15 and "InputDTMFFrame" in call.downstream.named())
        assert b"".join(f.audio for f in frames()) == audioop.ulaw2lin(ulaw, 2)
        assert call.serializer.media_direct == call.serializer.media_in == 30
    assert call.takers[1:] == [None]


def test_the_direct_taker_queues_audio_as_pipecats_receive_loop_would():
    """audio_in.direct's `take` does what pipecat 1.14's loop does with a media message: deserialize it, and push an
    audio frame with `push_audio_frame`, whose two statements it copies. If either changed, the seam is stale."""
    from pipecat.transports.base_input import BaseInputTransport
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketInputTransport

    from tests.pinned_source import statements

    assert statements(BaseInputTransport.push_audio_frame, indented=False) == [
        "if self._params.audio_in_enabled and not self._paused:",
        "await self._audio_in_queue.put(frame)",
    ]
    loop = statements(FastAPIWebsocketInputTransport._receive_messages, indented=False)
    assert loop.index("frame = await self._params.serializer.deserialize(message)") \
        < loop.index("if isinstance(frame, InputAudioRawFrame):") \
        < loop.index("await self.push_audio_frame(frame)"), loop
