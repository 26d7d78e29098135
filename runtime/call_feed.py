"""A per-process feed of a live call's events (turns, who is speaking, the end), keyed by call id.

Call sessions `publish`; the softphone's event socket `subscribe`s. Events are small dicts, published a few times per
turn (never per audio frame); with nobody listening a publish is one dict lookup. A listener that falls behind loses
events rather than slowing the call. With `voxline serve --workers N` the listener and the call may be in different
processes: each worker is linked to the parent's hub (runtime/workers.py), which passes every event on to the others.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from loguru import logger

MAX_QUEUED = 500
HUB_MAX_BUFFERED = 1 << 20  # bytes waiting for the hub before events to other workers are dropped

_listeners: dict[str, set[asyncio.Queue]] = {}
_hub: asyncio.StreamWriter | None = None


def publish(call_id: str, event: dict) -> None:
    _deliver(call_id, event)
    hub = _hub
    if hub is not None and not hub.is_closing() and hub.transport.get_write_buffer_size() < HUB_MAX_BUFFERED:
        hub.write(json.dumps([call_id, event], separators=(",", ":")).encode() + b"\n")


def _deliver(call_id: str, event: dict) -> None:
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


async def link_to_hub(address: str) -> asyncio.Task:
    """Join the workers' hub: this process's events go out to it, the others' come in. Returns the reading task."""
    global _hub
    # Connected here, then handed over: uvloop refuses an abstract address (a leading NUL) as a path.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)  # a local Unix socket: accepted or refused at once, no wait on the network
    except OSError:
        sock.close()
        raise
    reader, _hub = await asyncio.open_unix_connection(sock=sock)

    async def read() -> None:
        global _hub
        try:
            while line := await reader.readline():
                try:
                    call_id, event = json.loads(line)
                except ValueError:
                    logger.warning("call feed: an unreadable line from the workers' hub")
                    continue
                _deliver(call_id, event)
        finally:
            writer, _hub = _hub, None
            if writer is not None:
                writer.close()

    return asyncio.create_task(read(), name="call-feed-hub")
