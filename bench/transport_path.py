"""The server's CPU per 20 ms of audio through pipecat 1.14's websocket transports with voxline's Twilio
serializer, under the call's observers, with and without voxline's trims (`telephony/audio_out.py`,
`telephony/audio_in.py`). CPU microseconds (process time); the socket is a stand-in.

- out: a chunk of agent audio on its way to the caller: the output transport, then the heard-text gate and the
  assistant aggregator, as a call has them. The pacing sleep is taken out, so the figure is the work alone; each
  100 ms the TTS hands over is waited for until sent.
- in: a caller's `media` message (20 ms) into the pipeline: the input transport, to the processor after it. Each
  40 ms frame is waited for until it arrives there.

    .venv/bin/python bench/transport_path.py [--secs 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402
from pipecat.frames.frames import EndFrame, InputAudioRawFrame, TTSAudioRawFrame  # noqa: E402
from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregatorParams  # noqa: E402
from pipecat.processors.frame_processor import FrameProcessor  # noqa: E402
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402
from starlette.websockets import WebSocketState  # noqa: E402

from pipelines.turns.heard import HeardTextGate  # noqa: E402
from pipelines.turns.user_aggregator import aggregator_pair  # noqa: E402
from runtime import call_observer  # noqa: E402
from telephony import audio_in, audio_out  # noqa: E402
from telephony.twilio.serializer import StreamEvents, TwilioMediaSerializer  # noqa: E402

CHUNK = 320  # 20 ms at 8 kHz, 16-bit


class Socket:
    """What pipecat's FastAPI client uses of a starlette WebSocket; counts what is sent."""

    client_state = application_state = WebSocketState.CONNECTED

    def __init__(self):
        self.sent = 0
        self.until, self.reached = 0, asyncio.Event()
        self.incoming: asyncio.Queue[str] = asyncio.Queue()

    async def send_text(self, data: str) -> None:
        self.sent += 1
        if self.sent >= self.until:
            self.reached.set()

    async def send_bytes(self, data: bytes) -> None:
        await self.send_text("")

    async def receive(self) -> dict:
        return {"type": "websocket.receive", "text": await self.incoming.get()}

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.client_state = self.application_state = WebSocketState.DISCONNECTED


class Arrived(FrameProcessor):
    """The processor after the input transport; counts the caller's frames and takes them."""

    def __init__(self):
        super().__init__()
        self.until, self.reached, self.frames = 0, asyncio.Event(), 0

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.frames += 1
            if self.frames >= self.until:
                self.reached.set()
        else:
            await self.push_frame(frame, direction)


def transport(ws: Socket) -> tuple[FastAPIWebsocketTransport, TwilioMediaSerializer]:
    serializer = TwilioMediaSerializer("MZ" + "0" * 32, StreamEvents())
    return FastAPIWebsocketTransport(ws, FastAPIWebsocketParams(
        audio_in_enabled=True, audio_out_enabled=True, audio_out_10ms_chunks=2, audio_out_end_silence_secs=0,
        serializer=serializer)), serializer


async def run(worker: PipelineWorker) -> asyncio.Task:
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.sleep(0.3)
    return running


PARAMS = PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000, enable_metrics=True)


async def in_per_message_us(secs: float, trimmed: bool) -> float:
    ws = Socket()
    t, _serializer = transport(ws)
    if trimmed:
        audio_in.trim(t.input())
    arrived = Arrived()
    worker = PipelineWorker(Pipeline([t.input(), arrived]), params=PARAMS, observers=[UserBotLatencyObserver()],
                            enable_rtvi=False, enable_turn_tracking=False)
    call_observer.install(worker)
    running = await run(worker)
    message = json.dumps({"event": "media", "streamSid": "MZ" + "0" * 32,
                          "media": {"track": "inbound", "payload": base64.b64encode(bytes(160)).decode()}})
    frames = int(secs / 0.04)
    t0 = time.process_time()
    for i in range(frames):
        arrived.until = i + 1
        arrived.reached.clear()
        ws.incoming.put_nowait(message)
        ws.incoming.put_nowait(message)
        await arrived.reached.wait()
    spent = time.process_time() - t0
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, 10)
    return spent / (frames * 2) * 1e6


async def out_per_chunk_us(secs: float, trimmed: bool) -> float:
    ws = Socket()
    t, serializer = transport(ws)
    output = t.output()
    serializer.bind(output)

    async def no_sleep():
        return None

    output._write_audio_sleep = no_sleep
    if trimmed:
        audio_out.trim(output)
    _user, assistant = aggregator_pair(LLMContext(), LLMUserAggregatorParams())
    worker = PipelineWorker(Pipeline([output, HeardTextGate(serializer), assistant]),
                            params=PARAMS, observers=[UserBotLatencyObserver()], enable_rtvi=False,
                            enable_turn_tracking=False)
    call_observer.install(worker)
    running = await run(worker)
    chunks = int(secs / 0.02)
    piece = bytes(CHUNK * 5)  # the TTS hands over 100 ms at a time; the transport cuts it into 20 ms chunks
    t0 = time.process_time()
    for i in range(chunks // 5):
        ws.until = (i + 1) * 5
        ws.reached.clear()
        await worker.queue_frame(TTSAudioRawFrame(audio=piece, sample_rate=8000, num_channels=1))
        await ws.reached.wait()
    spent = time.process_time() - t0
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, 10)
    return spent / chunks * 1e6


async def main(secs: float, rounds: int) -> None:
    logger.remove()
    for measure, what, names in (
            (out_per_chunk_us, "20 ms chunk out", ("pipecat's output transport", "with audio_out.trim")),
            (in_per_message_us, "20 ms message in", ("pipecat's input transport", "with audio_in.trim"))):
        figures: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for trimmed in (False, True):
                figures[trimmed].append(await measure(secs, trimmed))
        for trimmed in (False, True):
            values = ", ".join(f"{v:.1f}" for v in figures[trimmed])
            print(f"{names[trimmed]}: {statistics.median(figures[trimmed]):.1f} µs per {what} "
                  f"(median; rounds {values})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--secs", type=float, default=60.0, help="seconds of agent audio per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(main(args.secs, args.rounds))
