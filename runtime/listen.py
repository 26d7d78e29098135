"""Run uvicorn on a socket that is listening before the app has started.

uvicorn binds and listens only once the app's start-up is over (migrations, models: 0.5–2 s). Until then the
kernel refuses connections, and a carrier does not retry a refused status callback: a call placed just before a
restart, or by a campaign that this start-up resumed, would lose its callbacks and its media stream. Listening first
queues those connections in the kernel's backlog until the app takes them.
"""

from __future__ import annotations

import logging
import socket
import sys

logger = logging.getLogger("uvicorn.error")


def run(app, *, worker_start_timeout: float | None = None, **options) -> None:
    """`uvicorn.run(app, **options)`, listening from the start. `app` is an ASGI app, or an import string with
    `workers` > 1 (the supervisor then spawns the workers, and hands them the connections: supervisor.py), where a
    new worker of a rolling restart may take `worker_start_timeout` seconds to start."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    config = uvicorn.Config(app, **options)
    try:
        sock = listening_socket(config)
    except OSError as exc:
        logger.error(f"cannot listen on {config.host}:{config.port}: {exc}")
        sys.exit(STARTUP_FAILURE)
    if config.workers > 1:
        from runtime.supervisor import Dispatching

        host, port = sock.getsockname()[:2]
        logger.info(f"Uvicorn running on http://{host}:{port}, each connection handed to the least-loaded of "
                    f"{config.workers} workers (Press CTRL+C to quit)")
        Dispatching(config, sock, start_timeout=worker_start_timeout).run()
        return
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def listening_socket(config) -> socket.socket:
    """uvicorn's bound socket for `config`, listening, and marked TCP so that connections get TCP_NODELAY."""
    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # uvicorn's socket says protocol 0, and asyncio sets TCP_NODELAY only on connections accepted from one that
        # says IPPROTO_TCP: without it, Nagle and delayed ACKs held every small write (a 20 ms media message, a
        # keep-alive response) ~40 ms. `uvicorn --workers` binds the same way and has the same delay.
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    sock.listen(config.backlog)
    return sock
