"""The server's CPU per 20 ms chunk of agent audio on its way to the caller: pipecat 1.14's websocket output
transport with voxline's Twilio serializer, then the heard-text gate and the assistant aggregator, under the call's
observers, as a call has them; with and without `telephony.audio_out.trim`. The pacing sleep is taken out, so the
figure is the work alone. CPU microseconds per chunk (process time), the socket a stand-in that takes each
message; each 100 ms the TTS hands over is waited for before the next.

    .venv/bin/python bench/output_path.py [--secs 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402
from pipecat.frames.frames import EndFrame, TTSAudioRawFrame  # noqa: E402
from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregatorParams  # noqa: E402
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402
from starlette.websockets import WebSocketState  # noqa: E402

from pipelines.turns.heard import HeardTextGate  # noqa: E402
from pipelines.turns.user_aggregator import aggregator_pair  # noqa: E402
from runtime import call_observer  # noqa: E402
from telephony import audio_out  # noqa: E402
from telephony.twilio.serializer import StreamEvents, TwilioMediaSerializer  # noqa: E402

CHUNK = 320  # 20 ms at 8 kHz, 16-bit


class Socket:
    """What pipecat's FastAPI client uses of a starlette WebSocket; counts what is sent."""

    client_state = application_state = WebSocketState.CONNECTED

    def __init__(self):
        self.sent = 0
        self.until, self.reached = 0, asyncio.Event()

    async def send_text(self, data: str) -> None:
        self.sent += 1
        if self.sent >= self.until:
            self.reached.set()

    async def send_bytes(self, data: bytes) -> None:
        await self.send_text("")

    async def receive(self) -> dict:
        await asyncio.Event().wait()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.client_state = self.application_state = WebSocketState.DISCONNECTED


async def per_chunk_us(secs: float, trimmed: bool) -> float:
    ws = Socket()
    serializer = TwilioMediaSerializer("MZ" + "0" * 32, StreamEvents())
    transport = FastAPIWebsocketTransport(ws, FastAPIWebsocketParams(
        audio_in_enabled=True, audio_out_enabled=True, audio_out_10ms_chunks=2, audio_out_end_silence_secs=0,
        serializer=serializer))
    output = transport.output()
    serializer.bind(output)

    async def no_sleep():
        return None

    output._write_audio_sleep = no_sleep
    if trimmed:
        audio_out.trim(output)
    _user, assistant = aggregator_pair(LLMContext(), LLMUserAggregatorParams())
    worker = PipelineWorker(Pipeline([output, HeardTextGate(serializer), assistant]),
                            params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000,
                                                  enable_metrics=True),
                            observers=[UserBotLatencyObserver()], enable_rtvi=False, enable_turn_tracking=False)
    call_observer.install(worker)
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.sleep(0.3)
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
    figures: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for trimmed in (False, True):
            figures[trimmed].append(await per_chunk_us(secs, trimmed))
    for trimmed, name in ((False, "pipecat's output transport"), (True, "with audio_out.trim")):
        values = ", ".join(f"{v:.1f}" for v in figures[trimmed])
        print(f"{name}: {statistics.median(figures[trimmed]):.1f} µs per 20 ms chunk (median; rounds {values})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--secs", type=float, default=60.0, help="seconds of agent audio per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(main(args.secs, args.rounds))
