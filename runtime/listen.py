"""Run uvicorn on a socket that is listening before the app has started.

uvicorn binds and listens only once the app's start-up is over (migrations, models: 0.5–2 s). Until then the
kernel refuses connections, and a carrier does not retry a refused status callback: a call placed just before a
restart, or by a campaign that this start-up resumed, would lose its callbacks and its media stream. Listening first
queues those connections in the kernel's backlog until the app takes them.
"""

from __future__ import annotations

import sys


def run(app, **options) -> None:
    """`uvicorn.run(app, **options)`, listening from the start. `app` is an ASGI app, or an import string with
    `workers` > 1 (uvicorn's supervisor then spawns the workers over this one socket)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(app, **options)
    sock = config.bind_socket()
    sock.listen(config.backlog)
    if config.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
        return
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE)
