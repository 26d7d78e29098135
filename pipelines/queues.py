"""One queue take under a deadline, without a task: what pipecat 1.14 does with `asyncio.wait_for(queue.get(),
timeout)`, which in Python 3.11 runs the `get` in a task of its own, once per audio frame or item. The seams that
take pipecat's per-frame queues back (telephony/audio_out.py, pipelines/providers/tts_contexts.py) use this."""

from __future__ import annotations

import asyncio
from typing import Any


async def get_within(queue: asyncio.Queue, timeout: float | None) -> Any:
    """The next item: at once if one is queued, else within `timeout` seconds (TimeoutError past it)."""
    try:
        return queue.get_nowait()
    except asyncio.QueueEmpty:
        async with asyncio.timeout(timeout):
            return await queue.get()
