"""A server's start and stop: connections made while it starts wait for it, and a server stopped mid-call still
closes the call record, with the reason saying so."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time

import pytest
import uvloop

from tests.calls import dial
from tests.conftest import free_port, server_env, start_server


@pytest.mark.parametrize("event_loop", ["auto", "asyncio"])
def test_a_request_made_while_the_server_starts_waits_for_it(tmp_path, event_loop):
    """A carrier does not retry a refused status callback: while the app starts (migrations, models), connections
    wait in the listening socket's backlog instead of being refused. On either event loop (uvloop by default)."""
    port = free_port()
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "serve", "--port", str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp_path,
                            env=server_env(tmp_path, {"VOXLINE_PUBLIC_URL": f"http://127.0.0.1:{port}",
                                                      "VOXLINE_EVENT_LOOP": event_loop}))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except ConnectionRefusedError:
                time.sleep(0.005)
        logged_when_connected = log.read_text()  # stderr is line-buffered: what was logged is there
        with sock:
            sock.settimeout(60)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: voxline\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert "ready (database" not in logged_when_connected, "the socket listened only once the app had started"
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        assert f"event loop: {'uvloop' if event_loop == 'auto' else 'asyncio'})" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _one_server_socket() -> socket.socket:
    import uvicorn

    from runtime.listen import listening_socket

    return listening_socket(uvicorn.Config(app=None, host="127.0.0.1", port=0))


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_connections_to_the_listening_socket_get_tcp_nodelay(loop_factory):
    """Without TCP_NODELAY, Nagle's algorithm and delayed ACKs held small writes (a media message, a keep-alive
    response) ~40 ms: uvicorn's own bound socket says protocol 0, and asyncio then leaves Nagle on. The server's
    socket says IPPROTO_TCP."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_accepted_nodelay(_one_server_socket()))


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_connection_handed_to_a_worker_gets_tcp_nodelay(loop_factory):
    """`serve --workers`: the parent accepts, passes the descriptor over a socket pair, and the worker serves it
    with `connect_accepted_socket` (runtime/supervisor.py); that road must set TCP_NODELAY too."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_handed_nodelay(_one_server_socket()))


class _Probe(asyncio.Protocol):
    def __init__(self, accepted: asyncio.Future):
        self.accepted = accepted

    def connection_made(self, transport):
        self.accepted.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        transport.close()


async def _accepted_nodelay(sock: socket.socket):
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()
    server = await asyncio.get_running_loop().create_server(lambda: _Probe(accepted), sock=sock)
    try:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await asyncio.wait_for(accepted, 5) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def _handed_nodelay(listener: socket.socket):
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future = loop.create_future()
    client = socket.create_connection(listener.getsockname()[:2])
    parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn, _ = listener.accept()
        with conn:
            socket.send_fds(parent_end, [b"c"], [conn.fileno()])
        _, fds, _, _ = socket.recv_fds(worker_end, 1, 1)
        await loop.connect_accepted_socket(lambda: _Probe(accepted), socket.socket(fileno=fds[0]))
        assert await asyncio.wait_for(accepted, 5) != 0
    finally:
        for sock in (client, parent_end, worker_end, listener):
            sock.close()


async def test_graceful_shutdown_closes_live_calls_as_server_shutdown(tmp_path):
    srv = start_server(tmp_path, auth_token=None)
    try:
        caller = await dial(srv)
        call_id = caller.answer.parameters["call_id"]
        async with caller:
            assert await caller.wait_agent_audio(0.0, 20.0)
            srv.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(caller.closed.wait(), 10)
        srv.proc.wait(timeout=15)
        row = srv.wait_ended(call_id)
        assert row["status"] == "completed" and row["disconnection_reason"] == "server_shutdown", dict(row)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
