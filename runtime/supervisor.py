"""`serve --workers N`: uvicorn's supervisor, with the parent handing each new connection to the least-loaded worker.

A call holds its worker for minutes, so the spread of new connections sets how late each worker's event loop runs.
uvicorn gives every worker the same listening socket, and a worker woken by a burst accepts all that is waiting (12
calls against 5 in a 30-call benchmark run). One `SO_REUSEPORT` socket per worker spreads by a hash of addresses:
N calls split like N coin tosses (34 against 46 at 80 calls), and the busier worker sets the latency of all.

Here the parent alone listens. A thread accepts each connection and passes its descriptor (`SCM_RIGHTS`, over a
socket pair per worker) to the worker holding the fewest: its open connections as it last reported them, plus those
passed to it that it has not yet taken up. A worker reports after start-up (until then it gets nothing, and
connections wait in the backlog as they wait for a single server starting: runtime/listen.py) and whenever its
count changes, at most once per loop turn. A stopped or stalled worker takes nothing up, so its in-flight count
grows and new connections go elsewhere. A dead worker's pair reads end-of-file: it gets no more, and its
replacement (uvicorn's health check) starts on a new pair. A rolling restart (SIGHUP) starts each new worker before
the old one is taken off the list and stopped; SIGTTIN / SIGTTOU add and take off one.

Tied to uvicorn's `Multiprocess`, `Process` and `Server` (a worker serves the connections it is handed through
`loop.connect_accepted_socket`, in uvicorn's own protocol, counted in uvicorn's `server_state.connections`); the rest
(health checks, signals, graceful shutdown) is uvicorn's. Linux (`SOCK_SEQPACKET`, as the Docker image runs).
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import socket
import struct
import threading
import time

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.server import Server
from uvicorn.supervisors.multiprocess import Multiprocess, Process

logger = logging.getLogger("uvicorn.error")

REPORT = struct.Struct("!II")  # worker → parent: connections taken up so far, connections open now
MAX_FDS = 64  # descriptors a worker takes per read
ACCEPT_PAUSE_S = 0.1
REPORT_RETRY_S = 0.05


class Lane:
    """The parent's end of one worker's socket pair, and what it knows of that worker's load."""

    __slots__ = ("closed", "open", "ready", "sent", "sock", "taken")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sent = self.taken = self.open = 0
        self.ready = self.closed = False

    @property
    def load(self) -> int:
        return self.open + self.sent - self.taken


class Dispatcher:
    """Accepts on `listener` in a thread of the parent and passes each connection to the least-loaded ready lane."""

    def __init__(self, listener: socket.socket):
        self.listener = listener
        listener.setblocking(False)
        self._lanes: list[Lane] = []
        self._lock = threading.Lock()
        self._stopped = self._closing = False
        self._next = 0  # where the search for the least-loaded starts: ties go round
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._listening = False
        self._resume_at = 0.0  # after a failed accept (out of descriptors), when to accept again
        threading.Thread(target=self._run, name="dispatcher", daemon=True).start()

    def open_lane(self) -> tuple[Lane, socket.socket]:
        """A new lane and the worker's end of its pair (to pass to the worker, then close here)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        lane = Lane(ours)
        with self._lock:
            self._lanes.append(lane)
            self._selector.register(ours, selectors.EVENT_READ, lane)
        return lane, theirs

    def close_lane(self, lane: Lane) -> None:
        """Nothing more goes to `lane` once this returns."""
        with self._lock:
            self._drop(lane)

    def stop(self) -> None:
        """Hand out no more connections (they wait in the backlog, reset when the parent exits)."""
        self._wake(closing=False)

    def close(self) -> None:
        """Stop, and end the thread (the parent's exit does as much)."""
        self._wake(closing=True)

    def _wake(self, closing: bool) -> None:
        # Under the lock with the send: the thread, seeing `_closing`, closes the wake pair, and a send after that
        # would fail on a closed descriptor.
        with self._lock:
            if self._closing:
                return
            self._stopped = True
            self._closing = closing
            self._wake_w.send(b"x")

    def loads(self) -> list[int]:
        with self._lock:
            return [lane.load for lane in self._lanes if lane.ready]

    def _drop(self, lane: Lane) -> None:
        if lane.closed:
            return
        lane.closed = True
        self._lanes.remove(lane)
        self._selector.unregister(lane.sock)
        lane.sock.close()

    def _run(self) -> None:
        while True:
            pause = self._resume_at - time.monotonic()
            events = self._selector.select(pause if pause > 0 else None)
            try:
                with self._lock:
                    for key, _ in events:
                        if key.fileobj is self._wake_r:
                            self._wake_r.recv(64)
                        elif key.fileobj is self.listener:
                            self._accept()
                        elif not key.data.closed:
                            self._read_reports(key.data)
                    self._listen(not self._stopped and time.monotonic() >= self._resume_at
                                 and any(lane.ready for lane in self._lanes))
            except Exception:  # the thread is the only way in: it must outlive any one connection's failure
                logger.exception("the connection dispatcher failed; it goes on")
            if self._closing:
                with self._lock:
                    for lane in list(self._lanes):
                        self._drop(lane)
                    self._selector.close()
                    self._wake_r.close()
                    self._wake_w.close()
                return

    def _listen(self, on: bool) -> None:
        if on != self._listening:
            if on:
                self._selector.register(self.listener, selectors.EVENT_READ)
            else:
                self._selector.unregister(self.listener)
            self._listening = on

    def _read_reports(self, lane: Lane) -> None:
        try:
            while report := lane.sock.recv(REPORT.size):
                lane.taken, lane.open = REPORT.unpack(report)
                lane.ready = True
            self._drop(lane)  # end of file: the worker is gone
        except BlockingIOError:
            pass
        except OSError as exc:
            logger.warning(f"a worker's connection pair failed ({exc}); it gets no more connections")
            self._drop(lane)

    def _accept(self) -> None:
        while True:
            ready = [lane for lane in self._lanes if lane.ready]
            if not ready:
                return
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except (ConnectionAbortedError, PermissionError):  # reset in the backlog, refused by a firewall rule
                continue
            except OSError as exc:  # out of descriptors or memory: the listener stays readable, so wait a little
                logger.warning(f"accepting a connection failed ({exc}); trying again in {ACCEPT_PAUSE_S} s")
                self._resume_at = time.monotonic() + ACCEPT_PAUSE_S
                return
            with conn:
                self._pass(conn, ready)

    def _pass(self, conn: socket.socket, ready: list[Lane]) -> None:
        start = self._next % len(ready)
        self._next += 1
        for lane in sorted(ready[start:] + ready[:start], key=lambda lane: lane.load):  # stable: ties go round
            try:
                socket.send_fds(lane.sock, [b"c"], [conn.fileno()])
            except BlockingIOError:  # its pair is full: a stalled worker
                continue
            except OSError as exc:
                logger.warning(f"passing a connection to a worker failed ({exc}); it gets no more connections")
                self._drop(lane)
                continue
            lane.sent += 1
            return
        logger.error("no worker could take a connection: it is closed")


class CountedConnections(set):
    """uvicorn's `server_state.connections` that tells the parent its size, at most once per loop turn."""

    def __init__(self, changed):
        super().__init__()
        self._changed = changed

    def add(self, item) -> None:
        super().add(item)
        self._changed()

    def remove(self, item) -> None:
        super().remove(item)
        self._changed()

    def discard(self, item) -> None:
        super().discard(item)
        self._changed()


class HandedServer(Server):
    """A worker's uvicorn server: serves the connections the parent hands it over `sockets[0]`."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.server_state.connections = CountedConnections(self._changed)
        self._lane: socket.socket | None = None
        self._taken = 0
        self._report_due = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the app's start-up, and no listening socket
        if self.should_exit or not sockets:
            return
        self._lane = sockets[0]
        self._lane.setblocking(False)
        asyncio.get_running_loop().add_reader(self._lane.fileno(), self._take)
        self._report()  # ready

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._lane is not None:
            self._take()  # what the parent passed before it stopped passing, served (or shut) with the rest
            asyncio.get_running_loop().remove_reader(self._lane.fileno())
        await super().shutdown(sockets=sockets)

    def _take(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._lane, 1, MAX_FDS)
            except BlockingIOError:
                return
            except OSError as exc:
                logger.error(f"reading the parent's connections failed: {exc}")
                data, fds = b"", []
            if not data and not fds:  # the parent is gone: nothing more will come
                loop.remove_reader(self._lane.fileno())
                self.should_exit = True
                return
            for fd in fds:
                self._taken += 1
                loop.create_task(self._serve_handed(socket.socket(fileno=fd)))
            self._changed()

    async def _serve_handed(self, sock: socket.socket) -> None:
        config = self.config
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self._protocol, sock, ssl=config.ssl)
        except (OSError, TimeoutError) as exc:  # reset before it was served, a failed TLS handshake
            logger.debug(f"a handed connection ended before it was served: {exc}")
            sock.close()

    def _protocol(self) -> asyncio.Protocol:
        return self.config.http_protocol_class(config=self.config, server_state=self.server_state,
                                               app_state=self.lifespan.state)

    def _changed(self) -> None:
        if not self._report_due and self._lane is not None:
            self._report_due = True
            asyncio.get_running_loop().call_soon(self._report)

    def _report(self) -> None:
        self._report_due = False
        try:
            self._lane.send(REPORT.pack(self._taken, len(self.server_state.connections)))
        except BlockingIOError:  # the parent behind on reading: a stale count would outlast it, so report again
            self._report_due = True
            asyncio.get_running_loop().call_later(REPORT_RETRY_S, self._report)
        except OSError:  # closed: the worker is stopping
            pass


class HandedProcess(Process):
    """A worker process on one lane of the dispatcher."""

    def __init__(self, config: Config, dispatcher: Dispatcher):
        self.lane, self._theirs = dispatcher.open_lane()
        super().__init__(config, [self._theirs])

    def __getstate__(self) -> dict:  # the worker gets its end of the pair only, through `sockets`
        state = self.__dict__.copy()
        del state["lane"], state["_theirs"]
        return state

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = HandedServer(config=self.config)
        return self._server

    def start(self) -> None:
        try:
            super().start()
        finally:
            self._theirs.close()  # the child has its copy; ours would hide the child's end-of-file


class Dispatching(Multiprocess):
    """uvicorn's supervisor over `HandedProcess` workers, all fed by one `Dispatcher` on `listener`.

    uvicorn gives a rolling restart's new worker its health check's timeout (5 s) to start, and past it keeps the old
    worker and abandons the restart. A voxline worker loads its local models and freezes its heap before it is
    ready: 4.5 and 5.2 s for the two new workers of a restart in a CI run on a busy 2-core machine, which left
    half the workers on the old code. Here a new worker gets `start_timeout` (VOXLINE_WORKER_START_TIMEOUT_SECS); the
    health check proper, a ping a live worker answers from a thread of its own, keeps uvicorn's timeout."""

    def __init__(self, config: Config, listener: socket.socket, *, start_timeout: float | None = None):
        super().__init__(config, sockets=[])
        self.dispatcher = Dispatcher(listener)
        self.start_timeout = start_timeout if start_timeout is not None else config.timeout_worker_healthcheck

    def _worker(self) -> HandedProcess:
        process = HandedProcess(self.config, self.dispatcher)
        process.start()
        return process

    def _retire(self, process: HandedProcess) -> None:
        self.dispatcher.close_lane(process.lane)
        process.terminate()
        process.join()

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            self.processes.append(self._worker())

    def terminate_all(self) -> None:
        self.dispatcher.stop()
        super().terminate_all()

    def restart_all(self) -> None:
        for idx, old_process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new_process = self._worker()
            if not new_process.wait_until_ready(self.start_timeout, self.should_exit):
                self.dispatcher.close_lane(new_process.lane)
                new_process.kill()
                new_process.join()
                if not self.should_exit.is_set():
                    logger.error(f"New child process [{new_process.pid}] was not ready in time; "
                                 f"keeping worker [{old_process.pid}] and aborting the restart.")
                return
            self._retire(old_process)
            self.processes[idx] = new_process

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            self.dispatcher.close_lane(process.lane)
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error(f"Child process [{process.pid}] failed to start, stopping the parent process.")
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logger.info(f"Child process [{process.pid}] died")
            self.processes[idx] = self._worker()

    def handle_ttin(self) -> None:
        logger.info("Received SIGTTIN, increasing the number of processes.")
        self.processes_num += 1
        self.processes.append(self._worker())

    def handle_ttou(self) -> None:
        logger.info("Received SIGTTOU, decreasing number of processes.")
        if self.processes_num <= 1:
            logger.info("Already reached one process, cannot decrease the number of processes anymore.")
            return
        self.processes_num -= 1
        self._retire(self.processes.pop())
