"""The parent's connection dispatcher of `serve --workers` (runtime/supervisor.py), driven from here as the workers
would drive it: real sockets, real descriptor passing, each "worker" reading its end of a lane and reporting."""

from __future__ import annotations

import errno
import socket
import time

import pytest

from runtime.supervisor import REPORT, Dispatcher


class Worker:
    """A lane's far end, as a worker holds it: takes passed connections, reports (taken, open)."""

    def __init__(self, dispatcher: Dispatcher):
        self.lane, self.end = dispatcher.open_lane()
        self.end.settimeout(5)
        self.conns: list[socket.socket] = []

    def report(self, open_: int | None = None) -> None:
        self.end.send(REPORT.pack(len(self.conns), len(self.conns) if open_ is None else open_))

    def take(self, timeout: float = 2.0) -> bool:
        """Take one passed connection if one comes within `timeout`."""
        self.end.settimeout(timeout)
        try:
            _, fds, _, _ = socket.recv_fds(self.end, 1, 4)
        except TimeoutError:
            return False
        self.conns += [socket.socket(fileno=fd) for fd in fds]
        return True

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.end.close()


@pytest.fixture
def listener():
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def connect(listener: socket.socket) -> socket.socket:
    return socket.create_connection(listener.getsockname(), timeout=5)


def shut(dispatcher: Dispatcher, workers: list[Worker], clients: list[socket.socket]) -> None:
    dispatcher.close()
    for end in workers + clients:
        end.close()


def settle(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_nothing_is_passed_before_a_worker_reports_then_it_is(listener):
    dispatcher = Dispatcher(listener)
    worker = Worker(dispatcher)
    clients = [connect(listener) for _ in range(3)]  # in the backlog: no worker has started
    try:
        assert not worker.take(timeout=0.3)
        worker.report()
        assert all(worker.take() for _ in range(3))
        # The passed descriptors are the clients' connections.
        for client, conn in zip(clients, worker.conns):
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
    finally:
        shut(dispatcher, [worker], clients)


def test_each_connection_goes_to_the_least_loaded_counting_those_not_yet_taken(listener):
    dispatcher = Dispatcher(listener)
    a, b = Worker(dispatcher), Worker(dispatcher)
    a.report()
    b.report()
    settle(lambda: dispatcher.loads() == [0, 0])
    clients = []
    try:
        for _ in range(4):  # none taken up yet: in flight counts, ties go round
            clients.append(connect(listener))
            settle(lambda: sum(dispatcher.loads()) == len(clients))
        assert dispatcher.loads() == [2, 2]
        assert a.take() and a.take() and b.take() and b.take()
        a.report(open_=5)  # a now holds five (its own count), b two
        b.report()
        settle(lambda: dispatcher.loads() == [5, 2])
        for _ in range(3):
            clients.append(connect(listener))
        settle(lambda: dispatcher.loads() == [5, 5])
        assert not a.take(timeout=0.3)
        assert b.take() and b.take() and b.take()
    finally:
        shut(dispatcher, [a, b], clients)


def test_a_closed_lane_and_a_dead_worker_get_nothing_more(listener):
    dispatcher = Dispatcher(listener)
    a, b, c = Worker(dispatcher), Worker(dispatcher), Worker(dispatcher)
    for worker in (a, b, c):
        worker.report()
    settle(lambda: len(dispatcher.loads()) == 3)
    dispatcher.close_lane(a.lane)  # a rolling restart taking a off the list
    assert a.lane.closed and a.lane.sock.fileno() == -1
    b.end.close()  # b's process died
    settle(lambda: len(dispatcher.loads()) == 1)
    clients = [connect(listener) for _ in range(3)]
    try:
        assert all(c.take() for _ in range(3))
        assert socket.recv_fds(a.end, 1, 4)[:2] == (b"", [])  # a's end reads end of file, no connection
    finally:
        shut(dispatcher, [a, c], clients)


def test_a_failed_accept_pauses_the_dispatcher_instead_of_spinning_or_dying(listener, caplog):
    class OutOfDescriptors(socket.socket):
        failures = 0

        def accept(self):
            if OutOfDescriptors.failures < 2:
                OutOfDescriptors.failures += 1
                raise OSError(errno.EMFILE, "Too many open files")
            return super().accept()

    failing = OutOfDescriptors(listener.family, listener.type, listener.proto, fileno=listener.detach())
    dispatcher = Dispatcher(failing)
    worker = Worker(dispatcher)
    worker.report()
    settle(lambda: dispatcher.loads() == [0])
    client = connect(failing)
    connected = time.monotonic()
    try:
        assert worker.take(timeout=5)
        assert time.monotonic() - connected >= 0.2  # two pauses, not a loop retrying at once
        assert OutOfDescriptors.failures == 2
        assert "accepting a connection failed ([Errno 24] Too many open files); trying again in 0.1 s" in caplog.text
    finally:
        shut(dispatcher, [worker], [client, failing])


def test_closing_while_reports_wake_the_thread_never_fails_on_the_wake_pair():
    """The supervisor closes the dispatcher at shutdown while workers may still be reporting. The thread, woken by a
    report, must not close the wake pair between `close()` deciding to close and its wake-up send (a send on a
    closed socket: `[Errno 9] Bad file descriptor`; about a quarter of these rounds failed so before the fix)."""
    closed: list[tuple[Dispatcher, Worker, socket.socket]] = []
    try:
        for _ in range(300):  # not waiting for each thread to end: the race is likelier with threads competing
            listener = socket.create_server(("127.0.0.1", 0))
            dispatcher = Dispatcher(listener)
            worker = Worker(dispatcher)
            closed.append((dispatcher, worker, listener))
            for _ in range(20):
                worker.report()
            dispatcher.close()
        for dispatcher, _, _ in closed:
            settle(lambda: dispatcher._wake_w.fileno() == -1)  # the thread ended and closed the pair
            dispatcher.stop()  # a later stop (uvicorn's shutdown after ours) is a no-op, not a failure
    finally:
        for _, worker, listener in closed:
            worker.close()
            listener.close()
