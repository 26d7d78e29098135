"""A real HTTP receiver for webhook deliveries on a loopback port: it records what it is sent and fails on request."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import free_port



@dataclass
class Got:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int | str = 0  # the status it was answered with, or "hang" / "drop"

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    got: list[Got] = field(default_factory=list)
    plans: dict[str, list] = field(default_factory=dict)  # path → what to do with its next requests
    lock: threading.Lock = field(default_factory=threading.Lock)

    def path(self, *plan: int | str) -> str:
        """A fresh path whose requests are answered, in turn, by `plan` (a status code, "hang" for longer than any
        attempt may take, "drop" to close the connection unanswered), then 200."""
        path = f"/hook/{uuid.uuid4().hex}"
        self.plans[path] = list(plan)
        return path

    def at(self, path: str) -> list[Got]:
        with self.lock:
            return [g for g in self.got if g.path == path]

    def wait(self, path: str, count: int, timeout: float = 15.0) -> list[Got]:
        deadline = time.monotonic() + timeout
        while len(found := self.at(path)) < count:
            assert time.monotonic() < deadline, f"{len(found)} of {count} requests reached {path}"
            time.sleep(0.02)
        return found


def _handler(receiver: Receiver):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with receiver.lock:
                plan = receiver.plans.get(self.path, [])
                action = plan.pop(0) if plan else 200
                receiver.got.append(Got(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                                        time.monotonic(), action))
            if action == "drop":
                self.close_connection = True
                return
            if action == "hang":
                time.sleep(3)
                action = 200
            reply = b'{"ok": true}' if action < 300 else b"receiver says no"
            try:
                self.send_response(action)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except OSError:  # the sender gave up waiting (a "hang")
                self.close_connection = True

    return Handler


@pytest.fixture(scope="session")
def receiver() -> Receiver:
    port = free_port()
    srv = ThreadingHTTPServer(("127.0.0.1", port), None)
    found = Receiver(f"http://127.0.0.1:{port}")
    srv.RequestHandlerClass = _handler(found)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield found
    srv.shutdown()
    srv.server_close()


