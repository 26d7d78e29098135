"""The VAD alone on noisy lines: N calls' analyzers in one process, each fed frames of white noise at real-time
pace (Silero scores every window), with Silero runs at most every RUN_EVERY_SECS. Prints CPU per call and the
mean batch size.

    .venv/bin/python bench/vad_batch.py --calls 20 --secs 15 --run-every 0.01
    .venv/bin/python bench/vad_batch.py --calls 20 --secs 15 --run-every 0     # a run as soon as a window waits
    .venv/bin/python bench/vad_batch.py --calls 20 --frame-ms 200 [--aligned]  # a steady line's frames

The calls' frames are spread over a frame's length, as independent lines are; `--aligned` ends them on one clock's
frame-length grid instead, each call within the 20 ms of its own message phase.
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

async def run(calls: int, secs: float, dbfs: float, frame_ms: int, aligned: bool) -> None:
    frame_secs = frame_ms / 1000
    frame_bytes = 16 * frame_ms  # 8 kHz, 16-bit
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
        spread = 0.02 if aligned else frame_secs
        await asyncio.sleep(i * spread / calls)
        start, k = time.monotonic(), 0
        while time.monotonic() - start < secs:
            at = (k * frame_bytes + i * 6400) % (len(noise) - frame_bytes)
            await analyzers[i].analyze_audio(noise[at:at + frame_bytes])
            k += 1
            await asyncio.sleep(max(0.0, start + k * frame_secs - time.monotonic()))

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(call(i) for i in range(calls)))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    frames = f"{frame_ms} ms frames{' aligned' if aligned else ''}"
    print(f"calls {calls}, {frames}, run every {vad.RUN_EVERY_SECS * 1000:g} ms: "
          f"CPU {cpu / wall * 100:.1f} % of a core, "
          f"{cpu / wall * 100 / calls:.3f} % per call; {len(sizes)} Silero runs, {np.mean(sizes):.2f} windows each")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--secs", type=float, default=15.0)
    ap.add_argument("--run-every", type=float, default=vad.RUN_EVERY_SECS, help="seconds between Silero runs, at most")
    ap.add_argument("--line-noise", type=float, default=-60.0, metavar="DBFS")
    ap.add_argument("--frame-ms", type=int, default=40, help="audio per frame (40: speech; 200: a steady line's)")
    ap.add_argument("--aligned", action="store_true", help="the calls' frames end together, as on one clock's grid")
    args = ap.parse_args()
    vad.RUN_EVERY_SECS = args.run_every
    asyncio.run(run(args.calls, args.secs, args.line_noise, args.frame_ms, args.aligned))


if __name__ == "__main__":
    main()
