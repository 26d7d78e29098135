"""The event loop of the benchmark's own processes (the load generator, the provider emulators): uvloop where it is
installed, as for the server. On a box the harness shares with the server under test, every millisecond of CPU the
generator and the emulators spend on their loops is taken from the server; `LOOP_BUSY_OUT` (bench/loop_busy/) or
`BENCH_HARNESS_LOOP=asyncio` keeps asyncio's loop, which that timer needs and which earlier rounds' figures used."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any


def name() -> str:
    if os.environ.get("LOOP_BUSY_OUT") or os.environ.get("BENCH_HARNESS_LOOP") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, Any]) -> Any:
    if name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
