"""Deepgram live STT emulator: WebSocket `/v1/listen`, transcribed by the bundled Whisper.

Point voxline at it with `VOXLINE_DEEPGRAM_BASE_URL=ws://HOST:PORT` (the SDK appends `/v1/listen`).
Speech is cut into utterances by Silero VAD; each gets one final `Results` (speech_final when the VAD heard it end),
interim ones while it goes on if `interim_results=true`, `SpeechStarted` with `vad_events=true`, `UtteranceEnd`
with `utterance_end_ms`. `Finalize` flushes the utterance in progress (`from_finalize`), `CloseStream` flushes,
answers `Metadata` and closes, and 10 s without audio or `KeepAlive` closes the socket as Deepgram does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from loguru import logger
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from pipelines.providers import local_models
from pipelines.providers.emulators import audio
from pipelines.providers.emulators.server import Running, json_response, start_ws, url_host
from pipelines.providers.emulators.validation import parse_json

ENCODINGS = ("linear16", "mulaw", "alaw")
INTERIM_EVERY_SECS = 1.0
MODEL_UUID = str(uuid.uuid5(uuid.NAMESPACE_URL, "voxline-emulator/whisper-tiny.en"))


def _refuse(connection: ServerConnection, status: int, message: str) -> Response:
    return json_response(connection, status, {"err_code": "INVALID_AUTH" if status == 401 else "Bad Request",
                                              "err_msg": message, "request_id": str(uuid.uuid4())})


def _options(connection: ServerConnection, request: Request) -> dict | Response:
    url = urlsplit(request.path)
    if url.path.rstrip("/") != "/v1/listen":
        return _refuse(connection, 404, f"Unknown path {url.path}: the emulator serves /v1/listen.")
    auth = request.headers.get("Authorization", "")
    proto = request.headers.get("Sec-WebSocket-Protocol", "")
    scheme, _, key = auth.partition(" ")
    if not (scheme.lower() in ("token", "bearer") and key.strip()) and not re.match(r"token,\s*\S", proto):
        return _refuse(connection, 401, "Invalid credentials.")
    q = {k: v[-1] for k, v in parse_qs(url.query).items()}
    encoding = q.get("encoding", "linear16")
    if encoding not in ENCODINGS:
        return _refuse(connection, 400, f"encoding {encoding!r}: the emulator takes {', '.join(ENCODINGS)}.")
    if q.get("channels", "1") != "1":
        return _refuse(connection, 400, "The emulator transcribes one channel only.")
    try:
        rate = int(q.get("sample_rate", "16000"))
        endpointing = q.get("endpointing", "")
        # Deepgram's default endpointing (10 ms) is its model's; Silero needs a few windows of silence.
        stop = max(0.2, int(endpointing) / 1000) if endpointing not in ("", "true", "false") else 0.4
        utterance_end = int(q["utterance_end_ms"]) / 1000 if q.get("utterance_end_ms") else None
    except ValueError as exc:
        return _refuse(connection, 400, f"Bad query parameter: {exc}")
    if not 4000 <= rate <= 48000:
        return _refuse(connection, 400, f"sample_rate {rate} is out of range.")
    flag = lambda name, default="false": q.get(name, default).lower() == "true"  # noqa: E731
    return {
        "encoding": encoding, "rate": rate, "model": q.get("model", "base"), "stop_secs": stop,
        "endpointing": endpointing != "false", "utterance_end": utterance_end,
        "interim": flag("interim_results"), "vad_events": flag("vad_events"),
        "punctuate": flag("punctuate") or flag("smart_format"),
    }


@dataclass
class Received:
    """The audio one stream received: for tests of how a client sends it."""

    messages: int = 0
    bytes: int = 0
    finalized_at: list[int] = field(default_factory=list)  # bytes received when each Finalize came


class _Session:
    def __init__(self, ws: ServerConnection, opts: dict, latency: float, idle_timeout: float):
        self.ws, self.opts, self.latency, self.idle_timeout = ws, opts, latency, idle_timeout
        self.request_id = str(uuid.uuid4())
        self.segmenter = audio.Segmenter(opts["rate"], stop_secs=opts["stop_secs"], max_secs=15)
        self.sha = hashlib.sha256()
        self.received = Received()
        # One writer, in order: a transcript is sent before anything that follows it on the stream.
        self.jobs: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self.busy = 0
        self.interim_at = 0.0
        self.first_of_utterance = True
        self.words_pending_end: float | None = None  # end of the last final, until UtteranceEnd
        self.final_had_words = False

    async def run(self) -> None:
        self.writer = writer = asyncio.create_task(self._write())
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.recv(), self.idle_timeout)
                except TimeoutError:
                    await self.ws.close(1011, "Deepgram did not receive audio data or a text message within the "
                                              "timeout window. See https://dpgr.am/net0001")
                    return
                if isinstance(message, bytes):
                    if not message:  # the old way of saying CloseStream
                        await self._close_stream()
                        return
                    await self._audio(message)
                elif await self._control(message):
                    return
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()

    async def _control(self, text: str) -> bool:
        """A text message; True when the stream is over."""
        try:
            kind = parse_json(text).get("type")  # too deep a nesting is malformed JSON too, not a dead socket
        except (ValueError, AttributeError):
            kind = None
        if kind == "KeepAlive":
            return False
        if kind == "Finalize":
            self.received.finalized_at.append(self.received.bytes)
            self._flush(from_finalize=True)
            return False
        if kind == "CloseStream":
            await self._close_stream()
            return True
        if kind == "Configure":
            await self._send({"type": "ConfigureFailure", "request_id": self.request_id, "code": "UNSUPPORTED",
                              "description": "The emulator does not reconfigure a live stream."})
            return False
        await self._send({"type": "Error", "variant": "DATA-0000", "description": f"Unknown message: {text[:100]}",
                          "message": "Invalid message type"})
        return False

    async def _audio(self, data: bytes) -> None:
        self.sha.update(data)
        self.received.messages += 1
        self.received.bytes += len(data)
        pcm = audio.decode(data, self.opts["encoding"])
        segments = await audio.feed(self.segmenter, pcm)
        for seg in segments:
            if seg.kind == "start":
                self.words_pending_end = None
                self.interim_at = seg.at
                if self.opts["vad_events"]:
                    await self._send({"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(seg.at, 3)})
            else:
                self._final(seg.audio, seg.start, seg.at, speech_final=seg.kind == "stop" and self.opts["endpointing"])
        now = self.segmenter.now
        if self.segmenter.speaking and self.opts["interim"] and now - self.interim_at >= INTERIM_EVERY_SECS \
                and not self.busy:
            self.interim_at = now
            self._interim(self.segmenter.utterance(), self.segmenter.started_at, now)
        end = self.words_pending_end
        if end is not None and self.opts["utterance_end"] and not self.segmenter.speaking \
                and now - end >= self.opts["utterance_end"]:
            self.words_pending_end = None
            self._enqueue(self._utterance_end, end)

    async def _utterance_end(self, end: float) -> None:
        if self.final_had_words:
            self.final_had_words = False
            await self._send({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(end, 3)})

    def _flush(self, from_finalize: bool) -> None:
        seg = self.segmenter.take()
        if seg is not None:
            self._final(seg.audio, seg.start, seg.at, speech_final=False, from_finalize=from_finalize)
        elif from_finalize:
            # Nothing left to say: Deepgram still confirms the finalize, with an empty final.
            now = self.segmenter.now
            self._enqueue(self._send, self._results("", now, now, is_final=True, from_finalize=True))

    def _final(self, pcm: bytes, start: float, end: float, *, speech_final: bool, from_finalize: bool = False) -> None:
        async def job() -> None:
            text = await self._transcribe(pcm)
            self.final_had_words = bool(text)
            await self._send(self._results(text, start, end, is_final=True, speech_final=speech_final,
                                           from_finalize=from_finalize))
            self.first_of_utterance = True

        # UtteranceEnd is timed on the audio, which goes on arriving while Whisper works.
        self.words_pending_end = end
        self._enqueue(job)

    def _interim(self, pcm: bytes, start: float, end: float) -> None:
        async def job() -> None:
            text = await self._transcribe(pcm)
            if text and self.segmenter.speaking:  # a final may have overtaken it
                await self._send(self._results(text, start, end, is_final=False))

        self._enqueue(job)

    async def _transcribe(self, pcm: bytes) -> str:
        text = await local_models.run_inference(audio.transcribe, pcm, self.opts["rate"])
        if text and not self.opts["punctuate"]:
            text = re.sub(r"[^\w\s']", "", text).lower()
        if self.first_of_utterance and self.latency:
            await asyncio.sleep(self.latency)
        self.first_of_utterance = False
        return text

    def _results(self, text: str, start: float, end: float, *, is_final: bool, speech_final: bool = False,
                 from_finalize: bool = False) -> dict:
        words = [{"word": re.sub(r"[^\w']", "", w).lower(), "start": s, "end": e, "confidence": 0.9,
                  "punctuated_word": w} for w, s, e in audio.word_times(text, start, end - start)]
        return {
            "type": "Results", "channel_index": [0, 1], "duration": round(end - start, 3), "start": round(start, 3),
            "is_final": is_final, "speech_final": speech_final, "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.9 if text else 0.0, "words": words}]},
            "metadata": {"request_id": self.request_id, "model_uuid": MODEL_UUID,
                         "model_info": {"name": self.opts["model"], "version": "emulator", "arch": "whisper-tiny.en"}},
        }

    async def _close_stream(self) -> None:
        self._flush(from_finalize=False)
        self._enqueue(self._send, {
            "type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
            "sha256": self.sha.hexdigest(), "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "duration": round(self.segmenter.now, 3), "channels": 1, "models": [MODEL_UUID],
            "model_info": {MODEL_UUID: {"name": self.opts["model"], "version": "emulator", "arch": "whisper-tiny.en"}},
        })
        done = asyncio.get_running_loop().create_future()
        self._enqueue(lambda: _resolve(done))
        # The writer ends early if the client has already gone.
        await asyncio.wait([done, self.writer], return_when=asyncio.FIRST_COMPLETED)
        await self.ws.close(1000)

    def _enqueue(self, fn: Callable, *args) -> None:
        self.busy += 1
        self.jobs.put_nowait((lambda: fn(*args)) if args else fn)

    async def _write(self) -> None:
        while True:
            job = await self.jobs.get()
            try:
                await job()
            except ConnectionClosed:
                return
            except Exception:  # one failed transcription must not stop the ones behind it
                logger.exception("deepgram emulator: job failed")
            finally:
                self.busy -= 1

    async def _send(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))


async def _resolve(future: asyncio.Future) -> None:
    future.set_result(None)


async def start(host: str = "127.0.0.1", port: int = 0, *, latency_ms: int = 0, idle_timeout: float = 10.0) -> Running:
    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        refused = _options(connection, request)
        return refused if isinstance(refused, Response) else None

    streams: list[Received] = []  # what each stream received, newest last (`Running.emulator`)

    async def handler(connection: ServerConnection) -> None:
        opts = _options(connection, connection.request)  # accepted by process_request, so options
        session = _Session(connection, opts, latency_ms / 1000, idle_timeout)
        streams.append(session.received)
        del streams[:-1000]  # a long-running emulator keeps only the latest
        await session.run()

    bound, stop = await start_ws(handler, process_request, host, port)
    return Running(f"ws://{url_host(host)}:{bound}", bound, "VOXLINE_DEEPGRAM_BASE_URL", streams, stop)
