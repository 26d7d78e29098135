"""Logs what blocked the event loop: every call's audio stops while one callback runs too long.

Opt-in (`VOXLINE_STALL_WARN_MS`, e.g. 60): a callback on the loop stamps the time every 10 ms, and a watcher thread
that finds the stamp older than the threshold logs the loop thread's stack once for that stall, then the stall's
length when it ends. Costs one timer callback per 10 ms; meant for finding the cause of audio gaps under load.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback

from loguru import logger

_TICK = 0.01


def start(loop: asyncio.AbstractEventLoop, warn_ms: float) -> None:
    state = {"stamp": time.monotonic()}
    loop_thread = threading.get_ident()

    def tick() -> None:
        state["stamp"] = time.monotonic()
        loop.call_later(_TICK, tick)

    def watch() -> None:
        reported = None
        while True:
            time.sleep(_TICK / 2)
            stamp = state["stamp"]
            late = (time.monotonic() - stamp) * 1000
            if late > warn_ms and reported != stamp:
                reported = stamp
                frame = sys._current_frames().get(loop_thread)
                stack = "".join(traceback.format_stack(frame, limit=25)) if frame else "?"
                logger.warning(f"event loop blocked {late:.0f} ms so far, in:\n{stack}")

    loop.call_soon_threadsafe(tick)
    threading.Thread(target=watch, name="voxline-stall-watch", daemon=True).start()
