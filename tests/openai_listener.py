"""An OpenAI-compatible chat completions server on a loopback port that records what it is asked (path,
Authorization and Host headers): a self-hosted model (Ollama, vLLM) or an internal service, as a test needs."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


REPLY = "Hello from the self-hosted model."
ANALYSIS = {"fields": {"dish": "lasagna"}}


class Listener:
    """An OpenAI-compatible chat completions server (streamed or not) that records each request's path,
    Authorization and Host headers, and accepts any key, as Ollama or vLLM without --api-key do."""

    def __init__(self):
        self.seen: list[tuple[str, str | None]] = []
        self.hosts: list[str | None] = []  # each request's Host header, in the same order
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                listener.seen.append((self.path, self.headers.get("authorization")))
                listener.hosts.append(self.headers.get("host"))
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, "application/json", b'{"error":{"message":"not found"}}')
                text = json.dumps(ANALYSIS) if "response_format" in body else REPLY
                chunk = {"id": "c1", "created": 0, "model": body.get("model", "m")}
                if body.get("stream"):
                    events = [{**chunk, "object": "chat.completion.chunk", "choices": [
                                  {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
                              {**chunk, "object": "chat.completion.chunk", "choices": [
                                  {"index": 0, "delta": {}, "finish_reason": "stop"}]}]
                    data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                    return self._send(200, "text/event-stream", data.encode())
                completion = {**chunk, "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
                self._send(200, "application/json", json.dumps(completion).encode())

            def _send(self, status: int, content_type: str, data: bytes):
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def auths(self, prefix: str) -> list[str | None]:
        return [auth for path, auth in self.seen if path.startswith(prefix)]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
