"""The harness's own event loop: uvloop when it is installed, as the server under test runs by default.

On a small machine the load generator and the provider emulators share the server's cores, so what their loops cost
is taken from the server: each caller sleeps to its next 20 ms frame and each emulator answers every message, and
asyncio's own loop runs its timers and socket callbacks in Python.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
