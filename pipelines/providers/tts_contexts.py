"""A TTS service's audio contexts read without a task per item.

pipecat 1.14's TTS service plays a reply from an audio context: a queue of the provider's audio chunks and word
timestamps, each item taken under `asyncio.wait_for(queue.get(), timeout)`, which in Python 3.11 runs the `get` in
a task of its own. A reply of a few seconds is a few hundred items, so a few hundred tasks, all while the other
calls wait for the event loop. Here an item already queued is taken at once, and the wait for one that is not yet
there keeps pipecat's deadline in the playing task (`pipelines/queues.py`); a keepalive still restarts the wait and
is never returned, and a quiet context still raises TimeoutError, which ends it as in pipecat. Tied to pipecat
1.14's `TTSService._audio_context_manager` and `AudioContextManager.get` / `_contexts` / `_KEEPALIVE`, pinned like
the other seams.

A take that does not wait still lets the event loop run once (`asyncio.sleep(0)`, no task): pipecat's task did that
for every item, and without it the playing task hands on a whole burst of queued audio (a provider sends a reply
faster than real time) before the output transport gets to write the first chunk. That kept the caller's first
audio back by the burst: the runtime overhead p50 went from ~9 to ~14-25 ms on 3 calls.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipelines.queues import get_within


def read_inline(tts) -> None:
    """`tts`: a pipecat TTS service, before its pipeline starts. Services without audio contexts are left alone."""
    manager = getattr(tts, "_audio_context_manager", None)
    if manager is None:
        return
    keepalive = manager._KEEPALIVE

    async def get(context_id: str, timeout: float) -> Any:
        queue = manager._contexts[context_id]
        if not queue.empty():
            await asyncio.sleep(0)
        while True:
            item = await get_within(queue, timeout)
            if item is not keepalive:
                return item

    manager.get = get
