"""The VAD alone on noisy lines: N calls' analyzers in one process, each fed 40 ms frames of white noise at real-time
pace (Silero scores every window), with Silero runs at most every RUN_EVERY_SECS. Prints CPU per call and the
mean batch size.

    .venv/bin/python bench/vad_batch.py --calls 20 --secs 15 --run-every 0.01
    .venv/bin/python bench/vad_batch.py --calls 20 --secs 15 --run-every 0     # a run as soon as a window waits
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipecat.audio.vad.vad_analyzer import VADParams  # noqa: E402

from config.agent import VADConfig  # noqa: E402
from pipelines.providers import local_models  # noqa: E402
from pipelines.providers import vad  # noqa: E402

FRAME_BYTES = 640  # 40 ms at 8 kHz, 16-bit: what the input transport hands the VAD


async def run(calls: int, secs: float, dbfs: float) -> None:
    await local_models.load("silero")
    d = VADConfig()
    params = VADParams(confidence=d.confidence, start_secs=d.start_secs, stop_secs=d.stop_secs, min_volume=d.min_volume)
    analyzers = [vad.SharedSileroVADAnalyzer(sample_rate=8000, params=params) for _ in range(calls)]
    for a in analyzers:
        a.set_sample_rate(8000)
    noise = (np.random.default_rng(0).standard_normal(8000 * 60) * 32768 * 10 ** (dbfs / 20)).astype(np.int16).tobytes()
    sizes: list[int] = []
    real = vad._run_batch
    vad._run_batch = lambda rows, rate: sizes.append(len(rows)) or real(rows, rate)

    async def call(i: int) -> None:
        await asyncio.sleep(i * 0.04 / calls)  # the calls' frames spread over the 40 ms, as real lines are
        start, k = time.monotonic(), 0
        while time.monotonic() - start < secs:
            at = (k * FRAME_BYTES + i * 6400) % (len(noise) - FRAME_BYTES)
            await analyzers[i].analyze_audio(noise[at:at + FRAME_BYTES])
            k += 1
            await asyncio.sleep(max(0.0, start + k * 0.04 - time.monotonic()))

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(call(i) for i in range(calls)))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    print(f"calls {calls}, run every {vad.RUN_EVERY_SECS * 1000:g} ms: CPU {cpu / wall * 100:.1f} % of a core, "
          f"{cpu / wall * 100 / calls:.3f} % per call; {len(sizes)} Silero runs, {np.mean(sizes):.2f} windows each")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--secs", type=float, default=15.0)
    ap.add_argument("--run-every", type=float, default=vad.RUN_EVERY_SECS, help="seconds between Silero runs, at most")
    ap.add_argument("--line-noise", type=float, default=-60.0, metavar="DBFS")
    args = ap.parse_args()
    vad.RUN_EVERY_SECS = args.run_every
    asyncio.run(run(args.calls, args.secs, args.line_noise))


if __name__ == "__main__":
    main()
