"""`voxline serve --workers N`: N server processes on one port, one event loop each.

A call's audio is a frame every 20 ms through pipecat's processors, all on one event loop; past ~20 talking calls
the loop itself is the queue (bench/). More processes on more cores carry more calls. What makes that safe:

- **uvicorn's supervisor** spawns the workers, restarts one that dies, and passes SIGTERM on (each worker ends its
  calls `server_shutdown`, as a single server does). The parent listens and hands each connection to the worker
  holding the fewest (runtime/supervisor.py), so that calls are spread evenly over them.
- **The parent prepares once** (migrations, agent files) before any worker starts, so no two run Alembic at once.
- **Stable names**: each worker takes the lowest free slot (a `flock` on `<data_dir>/workers/<port>.<slot>.lock`,
  released by the kernel when the process dies) and serves as `<instance_id>/<slot>`. A worker restarted after a
  crash takes its predecessor's slot, so it closes the calls that one left open (runtime/recovery.py); the stale-call
  sweep covers any other case.
- **The call feed** (softphone events) crosses processes through a hub in the parent: the browser's event socket
  and its media stream are two connections and may land on different workers.
- Everything else already coordinates through the database: batch dialing, webhook delivery and post-call analysis
  claim their work with leases.

Local models are loaded per worker (~150 MB each for Whisper + Piper). The rate limit is per worker unless
`VOXLINE_REDIS_URL` is set.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import socket
import threading
from pathlib import Path

from loguru import logger

from config.settings import Settings

ENV_WORKERS = "_VOXLINE_WORKERS"  # set by the parent: worker processes read it in worker_app()
ENV_PORT = "_VOXLINE_WORKER_PORT"
ENV_FEED_HUB = "_VOXLINE_FEED_HUB"

_slot_file = None  # the held lock: kept open for the life of the process


def claim_slot(data_dir: Path, port: int, workers: int) -> int:
    """The lowest slot no live worker holds. Twice `workers` slots, so a rolling restart (SIGHUP: the new worker
    starts before the old one stops) always finds one."""
    global _slot_file
    folder = data_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(2 * workers):
        f = (folder / f"{port}.{slot}.lock").open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        _slot_file = f
        return slot
    raise RuntimeError(f"all {2 * workers} worker slots under {folder} are held: is another server on port {port}?")


def serve_workers(settings: Settings, workers: int, options: dict) -> None:
    """Prepare the store once, start the hub, then run uvicorn's supervisor over `workers` spawned workers."""
    from runtime import listen
    from runtime.metrics import MULTIPROC_ENV
    from runtime.prepare import prepare_once

    if settings.redis_url is None:
        logger.warning(f"rate limits are counted per worker ({workers} × {settings.rate_limit_per_minute}/min in all); "
                       "set VOXLINE_REDIS_URL to share them")
    asyncio.run(prepare_once(settings))
    hub = FeedHub()
    port = options["port"]
    # Spawned workers get only the environment: what they need from this command goes there.
    os.environ.update({"VOXLINE_INSTANCE_ID": settings.instance_id, ENV_WORKERS: str(workers), ENV_PORT: str(port),
                       ENV_FEED_HUB: hub.name, MULTIPROC_ENV: str(_fresh_metrics_dir(settings.data_dir, port))})
    logger.info(f"starting {workers} workers on {options['host']}:{port} as {settings.instance_id}/<slot>")
    listen.run("runtime.workers:worker_app", factory=True, workers=workers,
               worker_start_timeout=settings.worker_start_timeout_secs, **options)


def _fresh_metrics_dir(data_dir: Path, port: int) -> Path:
    """Where the workers' metric values go (prometheus-client's multiprocess mode): emptied at each start, as
    prometheus-client asks, so a new server does not count an old one's calls."""
    import shutil

    folder = data_dir / "workers" / f"{port}.metrics"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder.resolve()


def worker_app():
    """uvicorn's app factory in each worker process (spawned: nothing is inherited but the environment)."""
    from config.settings import get_settings
    from runtime.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)  # before pipecat's import logs its banner
    from runtime.app import create_app

    slot = claim_slot(settings.data_dir, int(os.environ[ENV_PORT]), int(os.environ[ENV_WORKERS]))
    from runtime.metrics import forget_dead_workers

    forget_dead_workers()  # a predecessor that crashed still counts its calls as active
    settings.instance_id = f"{settings.instance_id}/{slot}"
    logger.info(f"worker {os.getpid()} serves as {settings.instance_id}")
    return create_app(settings, prepared=True)


def hub_address(name: str) -> str:
    return "\0" + name  # Linux's abstract namespace


class FeedHub:
    """Relays call-feed events between the workers: a line from one goes to every other. In the parent, on an
    abstract Unix socket (no file to clean up). Events are a few per turn, never per audio frame."""

    def __init__(self):
        # What the workers are told: an environment value cannot hold the address's leading NUL.
        self.name = f"voxline-feed-{os.getpid()}-{secrets.token_hex(4)}"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(hub_address(self.name))
        self._server.listen()
        self._peers: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="feed-hub", daemon=True).start()

    def _accept(self) -> None:
        while True:
            peer, _ = self._server.accept()
            with self._lock:
                self._peers.append(peer)
            threading.Thread(target=self._relay, args=(peer,), name="feed-hub-peer", daemon=True).start()

    def _relay(self, peer: socket.socket) -> None:
        reader = peer.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                with self._lock:
                    others = [p for p in self._peers if p is not peer]
                for other in others:  # workers read the hub continuously on their loops: a send waits only on a dying one
                    try:
                        other.sendall(line)
                    except OSError:
                        pass
        finally:
            with self._lock:
                self._peers.remove(peer)
            peer.close()

