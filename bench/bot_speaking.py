"""The cost of pipecat's `BotSpeakingFrame` heartbeat in a call: the output transport broadcasts one both ways
(upstream through the TTS, the LLM, the user aggregator, the STT and the keypad aggregator to the input; downstream
through the heard-text gate and the assistant aggregator), each push handed to the call's observers. CPU
microseconds per broadcast, each waited for until both ends have it, in a pipeline shaped like a `pipeline` call
(stand-ins for the providers, the real aggregators and observers): as pipecat carries it, and as a voxline call
stops it at its first push (`runtime/call_observer.py`); and CPU per second of agent speech at pipecat's 0.2 s
period and at voxline's (`telephony/audio_out.py`).

    .venv/bin/python bench/bot_speaking.py [--broadcasts 3000]
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
from pipecat.frames.frames import BotSpeakingFrame, EndFrame  # noqa: E402
from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineWorker  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.processors.aggregators.llm_response_universal import LLMUserAggregatorParams  # noqa: E402
from pipecat.processors.frame_processor import FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from pipelines.turns.keypad import KeypadAggregator  # noqa: E402
from pipelines.turns.user_aggregator import aggregator_pair  # noqa: E402
from runtime import call_observer  # noqa: E402
from telephony.audio_out import BOT_SPEAKING_EVERY_SECS  # noqa: E402

PIPECAT_EVERY_SECS = 0.2


class _Pass(FrameProcessor):
    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class _End(FrameProcessor):
    """Either end of the call: counts the broadcasts that reach it and hands everything else on."""

    def __init__(self):
        super().__init__()
        self.heard = 0

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, BotSpeakingFrame):
            self.heard += 1
            return
        await self.push_frame(frame, direction)


async def per_broadcast_us(broadcasts: int, stopped: bool) -> float:
    user, assistant = aggregator_pair(LLMContext(), LLMUserAggregatorParams())
    output = _Pass()
    first, last = _End(), _End()
    #                      input   keypad             STT      user  LLM      TTS      output  heard
    pipeline = Pipeline([first, KeypadAggregator(), _Pass(), user, _Pass(), _Pass(), output, _Pass(), assistant,
                         last])
    worker = PipelineWorker(pipeline, observers=[UserBotLatencyObserver()], enable_rtvi=False,
                            enable_turn_tracking=False)
    call_observer.install(worker)
    if stopped:
        call_observer.stop_observed_only_frames(pipeline)
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.sleep(0.3)
    t0 = time.process_time()
    for i in range(broadcasts):
        await output.broadcast_frame(BotSpeakingFrame)
        while not stopped and (first.heard <= i or last.heard <= i):
            await asyncio.sleep(0)
    await asyncio.sleep(0.2)  # the observers' tasks drain their queues (sleeping costs no CPU)
    spent = time.process_time() - t0
    await worker.queue_frame(EndFrame())
    await running
    return spent / broadcasts * 1e6


async def main(broadcasts: int) -> None:
    logger.remove()
    us = {}
    for stopped in (False, True):
        runs = [await per_broadcast_us(broadcasts, stopped) for _ in range(3)]
        us[stopped] = sorted(runs)[1]
        how = "stopped at its first push" if stopped else "through the call"
        print(f"{how}: {us[stopped]:.1f} µs of CPU per broadcast (median of {', '.join(f'{r:.1f}' for r in runs)})")
    print(f"pipecat (every {PIPECAT_EVERY_SECS:g} s, through the call): "
          f"{us[False] / PIPECAT_EVERY_SECS / 1000:.2f} ms of CPU per second of agent speech")
    print(f"voxline (every {BOT_SPEAKING_EVERY_SECS:g} s, stopped at its first push): "
          f"{us[True] / BOT_SPEAKING_EVERY_SECS / 1000:.3f} ms of CPU per second of agent speech")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broadcasts", type=int, default=3000)
    asyncio.run(main(ap.parse_args().broadcasts))
