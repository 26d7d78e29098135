"""Counting the tasks a piece of asyncio code makes: the seams that take pipecat's per-frame tasks away are tested by
what they no longer create."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def tasks_made() -> Iterator[list[str]]:
    """The qualified names of the coroutines of every task created on the running loop while inside."""
    names: list[str] = []
    loop = asyncio.get_running_loop()

    def counting(loop_, coro, **kwargs):
        names.append(getattr(coro, "__qualname__", ""))
        return asyncio.Task(coro, loop=loop_, **kwargs)

    loop.set_task_factory(counting)
    try:
        yield names
    finally:
        loop.set_task_factory(None)
