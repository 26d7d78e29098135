"""One client TLS context per process, for every connection to a provider.

Python makes a new TLS context for each connection it is not handed one for (`ssl=True` in asyncio's
`create_connection`, which websockets passes for a `wss://` URI; httpx for each client), and each new context loads
the CA store: 20-60 ms of CPU on the event loop, while every other call's audio waits. A call dials two or three
providers as it starts, so at a few new calls a second that was a stall every few hundred milliseconds for every
call in progress. A client context holds no per-connection state, so every connection shares this one, made once
(at start-up, in a thread: `registry.import_all`).
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

import httpcore2

_lock = threading.Lock()
_context: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """The process's client TLS context, as httpx would make it (blocking the first time: warm it in a thread)."""
    global _context
    if _context is None:
        with _lock:
            if _context is None:
                _context = httpcore2.default_ssl_context()
    return _context


def ws_tls(uri: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """websockets' `connect` keywords for `uri`: the shared context for `wss://` unless `kwargs` name one, nothing
    added for `ws://` (which refuses one)."""
    if uri.lower().startswith("wss://"):
        kwargs.setdefault("ssl", tls_context())
    return kwargs
