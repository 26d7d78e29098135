"""A real HTTP server on loopback for tool tests: what an agent's HTTP tools talk to."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class ToolServer:
    """Routes: /echo (the request back as JSON), /text (plain text), /slow?secs= , /big?bytes=, /fail (500),
    /redirect?to= (302). Every request is recorded in `requests`."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {"method": self.command, "path": parts.path, "query": query,
                        "body": json.loads(body) if body else None, "headers": dict(self.headers.items())}
                server.requests.append(seen)
                if parts.path == "/echo":
                    return self._send(200, json.dumps(seen).encode(), "application/json")
                if parts.path == "/text":
                    return self._send(200, query.get("say", "a table for two at 7 pm").encode(), "text/plain")
                if parts.path == "/slow":
                    time.sleep(float(query.get("secs", "3")))
                    return self._send(200, b"late", "text/plain")
                if parts.path == "/big":
                    return self._send(200, b"x" * int(query.get("bytes", "100000")), "text/plain")
                if parts.path == "/fail":
                    return self._send(500, b'{"detail": "kitchen on fire"}', "application/json")
                if parts.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", query.get("to", "/redirect"))  # no target: a loop
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self._send(404, b"no such route", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # a client that gave up (timeout, truncation)
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> ToolServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
