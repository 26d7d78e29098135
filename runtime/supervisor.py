"""`serve --workers N`: uvicorn's supervisor, with a listening socket of its own for each worker.

uvicorn hands every worker the same listening socket. A worker woken by a new connection accepts every connection
waiting (asyncio and libuv both accept until the backlog is empty), so a burst of calls (a campaign starting, calls
placed at the same minute) lands mostly on one worker: 12 calls against 5 in a 30-call benchmark run. Calls last
minutes, so the imbalance lasts too, and one worker's event loop runs late while the other idles.

Here each worker serves its own socket, all bound to the one port with `SO_REUSEPORT`, and the kernel spreads new
connections over them by their addresses, whatever each worker is doing (Linux's behaviour, which the Docker image
runs on; BSD and macOS accept the option without spreading). All sockets are made and listening in the
parent before any worker starts, and the parent keeps them open: connections that come while a worker starts, or
while a crashed one is replaced, wait in that socket's backlog for the worker that takes it over, as they wait
for a single server starting (runtime/listen.py). A rolling restart (SIGHUP) starts each new worker on its
predecessor's socket before retiring it. SIGTTOU closes the last worker's socket with the worker; connections still
in that socket's backlog are reset (the kernel does not move them to another socket of the group).

Tied to uvicorn's `Multiprocess` (the methods that start a worker are redone here with the worker's own socket);
the rest of the supervisor (health checks, signals, stopping) is uvicorn's.
"""

from __future__ import annotations

import logging
import socket

from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

logger = logging.getLogger("uvicorn.error")


def reuse_port_sockets(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """`count` TCP sockets bound to `host` and `port` with SO_REUSEPORT (port 0: one free port for all), listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections accepted from a socket that says so.
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.set_inheritable(True)
            sock.listen(backlog)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class PerWorkerSockets(Multiprocess):
    """Worker i serves `sockets[i]`."""

    def _worker(self, idx: int) -> Process:
        if idx >= len(self.sockets):  # SIGTTIN: one more worker, one more socket on the same port
            host, port = self.sockets[0].getsockname()[:2]
            self.sockets.extend(reuse_port_sockets(host, port, idx + 1 - len(self.sockets), self.config.backlog))
        process = Process(self.config, [self.sockets[idx]])
        process.start()
        return process

    def init_processes(self) -> None:
        for idx in range(self.processes_num):
            self.processes.append(self._worker(idx))

    def restart_all(self) -> None:
        for idx, old_process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new_process = self._worker(idx)
            if not new_process.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new_process.kill()
                new_process.join()
                if not self.should_exit.is_set():
                    logger.error(f"New child process [{new_process.pid}] was not ready in time; "
                                 f"keeping worker [{old_process.pid}] and aborting the restart.")
                return
            old_process.terminate()
            old_process.join()
            self.processes[idx] = new_process

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error(f"Child process [{process.pid}] failed to start, stopping the parent process.")
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info(f"Child process [{process.pid}] died")
            self.processes[idx] = self._worker(idx)

    def handle_ttin(self) -> None:
        logger.info("Received SIGTTIN, increasing the number of processes.")
        self.processes_num += 1
        self.processes.append(self._worker(len(self.processes)))

    def handle_ttou(self) -> None:
        logger.info("Received SIGTTOU, decreasing number of processes.")
        if self.processes_num <= 1:
            logger.info("Already reached one process, cannot decrease the number of processes anymore.")
            return
        self.processes_num -= 1
        process = self.processes.pop()
        process.terminate()
        process.join()
        self.sockets.pop(len(self.processes)).close()
