"""Cartesia TTS emulator: WebSocket `/tts/websocket`, spoken by the bundled Piper voice.

Point voxline at it with `VOXLINE_CARTESIA_URL=ws://HOST:PORT/tts/websocket`.
Transcripts of one `context_id` are buffered until a sentence ends (or `continue: false`, or `max_buffer_delay_ms`;
with 0, not at all), synthesized in order, resampled to `output_format.sample_rate` and sent as `chunk`s in its
encoding, with `timestamps` (spread over the audio by word length) when `add_timestamps` is set, then `done` once
the context is closed with `continue: false`. `{"context_id", "cancel": true}` stops a context without another word.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from loguru import logger
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from pipelines.providers import local_models
from pipelines.providers.emulators import audio
from pipelines.providers.emulators.server import Running, json_response, start_ws, url_host
from pipelines.providers.emulators.validation import parse_json

ENCODINGS = ("pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw")
RATES = (8000, 16000, 22050, 24000, 44100, 48000)
MAX_BUFFER_DELAY_MS = 5000  # Cartesia's documented range is 0 to 5000
CHUNK_SECS = 0.1
_SENTENCE_END = re.compile(r"[.!?]\s*$")


def _process_request(connection: ServerConnection, request: Request) -> Response | None:
    url = urlsplit(request.path)
    if url.path.rstrip("/") != "/tts/websocket":
        return json_response(connection, 404, {"error": f"Unknown path {url.path}: the emulator serves /tts/websocket"})
    q = parse_qs(url.query)
    key = request.headers.get("X-API-Key") or (q.get("api_key") or [""])[-1] or (q.get("access_token") or [""])[-1]
    if not key.strip():
        return json_response(connection, 401, {"error": "Missing API key: send X-API-Key or ?api_key="})
    return None


@dataclass
class _Context:
    id: str
    request: dict
    text: str = ""
    pieces: asyncio.Queue = field(default_factory=asyncio.Queue)
    task: asyncio.Task | None = None
    timer: asyncio.TimerHandle | None = None
    closed: bool = False


class _Session:
    def __init__(self, ws: ServerConnection, latency: float, received: list[dict]):
        self.ws, self.latency, self.received = ws, latency, received
        self.contexts: dict[str, _Context] = {}

    async def run(self) -> None:
        try:
            async for message in self.ws:
                await self._handle(message)
        except ConnectionClosed:
            pass
        finally:
            for ctx in self.contexts.values():
                if ctx.task:
                    ctx.task.cancel()

    async def _handle(self, message: str | bytes) -> None:
        try:
            req = parse_json(message)
            if not isinstance(req, dict):
                raise ValueError
        except ValueError:
            await self._error("", "Invalid JSON: each message is one generation request object.")
            return
        if not isinstance(req.get("context_id"), str | None):
            await self._error("", f"context_id must be a string, not {type(req['context_id']).__name__}")
            return
        context_id = req.get("context_id") or str(uuid.uuid4())
        if not isinstance(req.get("cancel"), bool | None):
            await self._error(context_id, "cancel must be a boolean")
            return
        if req.get("cancel"):
            self._drop(context_id)
            return
        if problem := _invalid(req):
            # The error is `done` for its context (clients end it there), so the emulator ends it too; the other
            # contexts on the socket go on.
            self._drop(context_id)
            await self._error(context_id, problem)
            return
        self.received.append({"context_id": context_id, "transcript": req.get("transcript") or "",
                              "continue": bool(req.get("continue", False))})
        ctx = self.contexts.get(context_id)
        if ctx is None or ctx.closed:
            ctx = self.contexts[context_id] = _Context(context_id, req)
            ctx.task = asyncio.create_task(self._speak(ctx))
        ctx.text += req.get("transcript") or ""
        if not req.get("continue", False):
            self._release(ctx)
            ctx.closed = True
            ctx.pieces.put_nowait(None)
        elif req.get("flush"):
            self._release(ctx)
            ctx.pieces.put_nowait("flush")
        elif _SENTENCE_END.search(ctx.text):
            self._release(ctx)
        elif ctx.text.strip() and ctx.timer is None:
            delay = req.get("max_buffer_delay_ms")
            delay = 3000 if delay is None else delay
            if delay == 0:
                # 0 turns the server's buffering off: each submission is generated as it comes, never joined to the
                # next one (which a timer of 0 would do when both arrive in one read).
                self._release(ctx)
            else:
                ctx.timer = asyncio.get_running_loop().call_later(delay / 1000, self._release, ctx)

    def _drop(self, context_id: str) -> None:
        ctx = self.contexts.pop(context_id, None)
        if ctx and ctx.timer:
            ctx.timer.cancel()
        if ctx and ctx.task:
            ctx.task.cancel()

    def _release(self, ctx: _Context) -> None:
        if ctx.timer:
            ctx.timer.cancel()
            ctx.timer = None
        if ctx.text.strip():
            ctx.pieces.put_nowait(ctx.text.strip())
        ctx.text = ""

    async def _speak(self, ctx: _Context) -> None:
        fmt = ctx.request["output_format"]
        encoding, rate = fmt["encoding"], int(fmt["sample_rate"])
        offset, flushes, first = 0.0, 0, True
        try:
            while (piece := await ctx.pieces.get()) is not None:
                if piece == "flush":
                    flushes += 1
                    await self._send({"type": "flush_done", "context_id": ctx.id, "flush_id": flushes,
                                      "flush_done": True, "status_code": 206, "done": False})
                    continue
                pcm = await local_models.run_inference(audio.synthesize, piece, rate)
                if first and self.latency:
                    await asyncio.sleep(self.latency)
                first = False
                wire = audio.encode(pcm, encoding)
                step = max(1, int(audio.bytes_per_second(encoding, rate) * CHUNK_SECS))
                step -= step % (4 if encoding == "pcm_f32le" else 2 if encoding == "pcm_s16le" else 1)
                for i in range(0, len(wire), step):
                    await self._send({"type": "chunk", "context_id": ctx.id, "status_code": 206, "done": False,
                                      "data": base64.b64encode(wire[i:i + step]).decode(), "step_time": 0})
                duration = len(pcm) / 2 / rate
                if ctx.request.get("add_timestamps"):
                    words = audio.word_times(piece, offset, duration)
                    await self._send({"type": "timestamps", "context_id": ctx.id, "status_code": 206, "done": False,
                                      "word_timestamps": {"words": [w for w, _, _ in words],
                                                          "start": [s for _, s, _ in words],
                                                          "end": [e for _, _, e in words]}})
                offset += duration
            await self._send({"type": "done", "context_id": ctx.id, "status_code": 200, "done": True})
        except ConnectionClosed:
            return
        except Exception as exc:  # a synthesis failure ends this context, not the connection
            logger.exception("cartesia emulator: synthesis failed")
            with contextlib.suppress(ConnectionClosed):
                await self._error(ctx.id, f"Synthesis failed: {exc}", 500)
        if self.contexts.get(ctx.id) is ctx:
            del self.contexts[ctx.id]

    async def _error(self, context_id: str, message: str, status: int = 400) -> None:
        await self._send({"type": "error", "context_id": context_id, "status_code": status, "done": True,
                          "error": message})

    async def _send(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))


def _invalid(req: dict) -> str | None:
    if not req.get("model_id") or not isinstance(req["model_id"], str):
        return "model_id is required (a string)"
    voice = req.get("voice")
    if not isinstance(voice, dict) or not voice.get("id") and not voice.get("embedding"):
        return "voice is required: {mode: id, id: <voice id>}"
    if not isinstance(voice.get("id") or "", str) or not isinstance(voice.get("embedding") or [], list):
        return "voice.id must be a string (voice.embedding a list of numbers)"
    for key, kind in (("transcript", str), ("language", str), ("continue", bool), ("flush", bool),
                      ("add_timestamps", bool), ("add_phoneme_timestamps", bool)):
        if req.get(key) is not None and not isinstance(req[key], kind):
            return f"{key} must be a {'string' if kind is str else 'boolean'}, not {type(req[key]).__name__}"
    delay = req.get("max_buffer_delay_ms")
    if delay is not None and (not isinstance(delay, int) or isinstance(delay, bool)
                              or not 0 <= delay <= MAX_BUFFER_DELAY_MS):
        return f"max_buffer_delay_ms must be an integer from 0 to {MAX_BUFFER_DELAY_MS}, not {delay!r:.40}"
    fmt = req.get("output_format")
    if not isinstance(fmt, dict):
        return "output_format is required"
    if fmt.get("container", "raw") != "raw":
        return f"container {fmt.get('container')!r}: the WebSocket API streams raw audio only"
    if fmt.get("encoding") not in ENCODINGS:
        return f"encoding {fmt.get('encoding')!r} is not one of {', '.join(ENCODINGS)}"
    if fmt.get("sample_rate") not in RATES:
        return f"sample_rate {fmt.get('sample_rate')!r} is not one of {', '.join(map(str, RATES))}"
    return None


async def start(host: str = "127.0.0.1", port: int = 0, *, latency_ms: int = 0) -> Running:
    """`Running.emulator`: every accepted generation request, in order ({context_id, transcript, continue}), for
    tests to see what a client sent."""
    received: list[dict] = []

    async def handler(connection: ServerConnection) -> None:
        await _Session(connection, latency_ms / 1000, received).run()

    bound, stop = await start_ws(handler, _process_request, host, port)
    return Running(f"ws://{url_host(host)}:{bound}/tts/websocket", bound, "VOXLINE_CARTESIA_URL", received, stop)
