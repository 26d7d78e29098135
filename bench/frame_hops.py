"""The cost of a caller's audio frame crossing pipecat processors, with a call's observers behind pipecat's own
`WorkerObserver` or behind voxline's (`runtime/call_observer.py`), and with the keypad's aggregator letting the
caller's audio pass it by (`pipelines/turns/keypad.py`). CPU microseconds per frame, frames sent one at a time
(each waits until the last processor has it), as a call's 40 ms frames come.

    .venv/bin/python bench/frame_hops.py [--frames 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402
from pipecat.frames.frames import EndFrame, InputAudioRawFrame  # noqa: E402
from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineWorker  # noqa: E402
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator  # noqa: E402
from pipecat.processors.frame_processor import FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from pipelines.turns.keypad import KeypadAggregator  # noqa: E402
from runtime import call_observer  # noqa: E402


class _Sink(FrameProcessor):
    """Where the audio stops, as at the user aggregator."""

    def __init__(self):
        super().__init__()
        self.frames = 0

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.frames += 1
        else:
            await self.push_frame(frame, direction)


async def per_frame_us(frames: int, voxline_observer: bool, keypad: bool = False) -> float:
    sink = _Sink()
    worker = PipelineWorker(Pipeline([KeypadAggregator() if keypad else DTMFAggregator(), sink]), observers=[UserBotLatencyObserver()],
                            enable_rtvi=False, enable_turn_tracking=False)
    if voxline_observer:
        call_observer.install(worker)
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.sleep(0.3)
    audio = bytes(640)
    t0 = time.process_time()
    for i in range(frames):
        await worker.queue_frame(InputAudioRawFrame(audio=audio, sample_rate=8000, num_channels=1))
        while sink.frames <= i:
            await asyncio.sleep(0)
    spent = time.process_time() - t0
    await worker.queue_frame(EndFrame())
    await running
    return spent / frames * 1e6


async def main(frames: int) -> None:
    logger.remove()
    for _ in range(2):
        for voxline_observer in (False, True):
            name = "voxline's observer proxy" if voxline_observer else "pipecat's WorkerObserver"
            print(f"{name}: {await per_frame_us(frames, voxline_observer):.1f} µs per frame")
        print(f"voxline's observer proxy, the caller's audio passing the keypad by (pipelines/turns/keypad.py): "
              f"{await per_frame_us(frames, True, keypad=True):.1f} µs per frame")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=10000)
    asyncio.run(main(ap.parse_args().frames))
