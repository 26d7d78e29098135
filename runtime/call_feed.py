"""A per-process feed of a live call's events (turns, who is speaking, the end), keyed by call id.

Call sessions `publish`; the softphone's event socket `subscribe`s. Events are small dicts, published a few times per
turn (never per audio frame); with nobody listening a publish is one dict lookup. A listener that falls behind loses
events rather than slowing the call. Process-local: a listener sees the calls this process serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

MAX_QUEUED = 500

_listeners: dict[str, set[asyncio.Queue]] = {}


def publish(call_id: str, event: dict) -> None:
    queues = _listeners.get(call_id)
    if not queues:
        return
    for queue in queues:
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            pass  # a stalled listener: it misses this event, the call does not wait for it


def listening(call_id: str) -> bool:
    return bool(_listeners.get(call_id))


@contextmanager
def subscribe(call_id: str) -> Iterator[asyncio.Queue]:
    queue: asyncio.Queue = asyncio.Queue(maxsize=MAX_QUEUED)
    _listeners.setdefault(call_id, set()).add(queue)
    try:
        yield queue
    finally:
        queues = _listeners.get(call_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del _listeners[call_id]
