"""Starting an emulator on a host and port, in-process (tests) or for ever (the CLI)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response


@dataclass
class Running:
    """A started emulator. `url` is the value to give voxline (see `setting`)."""

    url: str
    port: int
    setting: str
    emulator: Any = None
    _stop: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)

    async def close(self) -> None:
        if self._stop:
            stop, self._stop = self._stop, None
            await stop()

    async def __aenter__(self) -> Running:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def json_response(connection: ServerConnection, status: int, body: dict) -> Response:
    """A refused WebSocket upgrade with a JSON body, as the real providers answer one."""
    response = connection.respond(HTTPStatus(status), json.dumps(body))
    del response.headers["Content-Type"]  # Headers is a multidict: setting would add a second one
    response.headers["Content-Type"] = "application/json"
    return response


async def start_ws(
    handler: Callable[[ServerConnection], Awaitable[None]],
    process_request: Callable[[ServerConnection, Request], Response | None],
    host: str,
    port: int,
    **options: Any,
) -> tuple[int, Callable[[], Awaitable[None]]]:
    # No size limit on incoming messages: a Realtime client may append seconds of audio in one event.
    server = await serve(handler, host, port, process_request=process_request, max_size=None, compression=None,
                         **options)
    bound = server.sockets[0].getsockname()[1]

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return bound, stop


async def start_asgi(app: Any, host: str, port: int) -> tuple[int, Callable[[], Awaitable[None]]]:
    import uvicorn

    # Binding here rather than in uvicorn tells us the port when 0 was asked for.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)

    async def stop() -> None:
        server.should_exit = True
        await task
        sock.close()

    return sock.getsockname()[1], stop


def url_host(host: str) -> str:
    """The host as it goes in a URL: a wildcard bind is reached on loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
