"""OpenAI Realtime emulator, GA protocol (what pipecat 1.14 speaks): WebSocket `/v1/realtime?model=...`.

Point voxline at it with `VOXLINE_OPENAI_REALTIME_URL=ws://HOST:PORT/v1/realtime`, or one agent with
`realtime.base_url` (the client appends `?model=`).
Input and output audio are `audio/pcm` (24 kHz), `audio/pcmu` or `audio/pcma` (8 kHz G.711, used as is); the beta
names (`input_audio_format: g711_ulaw`, ...) are read too. Server VAD is Silero, understanding is Whisper, replies
come from the same rules as the chat emulator (`rules.py`) and are spoken by Piper. Function calls are made when
a rule asks for a tool the session (or the response) declares.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from urllib.parse import parse_qs, urlsplit

from loguru import logger
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from pipelines.providers import local_models
from pipelines.providers.emulators import audio
from pipelines.providers.emulators.realtime_response import ActiveResponse, Responding
from pipelines.providers.emulators.realtime_session import (
    FORMATS, SessionError, check_item, default_session, new_id as _id, update_session,
)
from pipelines.providers.emulators.rules import Rules
from pipelines.providers.emulators.server import Running, json_response, start_ws, url_host
from pipelines.providers.emulators.validation import Invalid, expect, optional, parse_json


def _error_body(message: str, code: str, type_: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": type_, "code": code, "param": None}}


def _process_request(connection: ServerConnection, request: Request) -> Response | None:
    url = urlsplit(request.path)
    if url.path.rstrip("/") != "/v1/realtime":
        return json_response(connection, 404, _error_body(f"Invalid URL (GET {url.path})", "not_found"))
    auth = request.headers.get("Authorization", "")
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    if not (auth.lower().startswith("bearer ") and auth[7:].strip()) and "openai-insecure-api-key." not in offered:
        return json_response(connection, 401, _error_body("You didn't provide an API key.", "missing_api_key"))
    if not parse_qs(url.query).get("model"):
        return json_response(connection, 400, _error_body("Missing required parameter: 'model'.",
                                                          "missing_required_parameter"))
    return None


class _Session(Responding):
    def __init__(self, ws: ServerConnection, model: str, rules: Rules, latency: float):
        self.ws, self.rules, self.latency = ws, rules, latency
        self.session = default_session(_id("sess"), model)
        self.items: dict[str, dict] = {}
        self.buffer = bytearray()  # manual turns only; with server VAD the segmenter holds the utterance
        self.segmenter: audio.Segmenter | None = None
        self.speech_item: str | None = None
        self.heard_secs = 0.0
        self.understanding: set[asyncio.Task] = set()
        self.response: ActiveResponse | None = None
        self._configure_input()

    # --- plumbing ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        handlers = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit_buffer,
            "input_audio_buffer.clear": self._clear_buffer,
            "conversation.item.create": self._item_create,
            "conversation.item.truncate": self._item_truncate,
            "conversation.item.delete": self._item_delete,
            "conversation.item.retrieve": self._item_retrieve,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }
        try:
            await self._send("session.created", session=self.session)
            async for message in self.ws:
                try:
                    evt = parse_json(message)
                    if not isinstance(evt, dict):
                        raise ValueError
                except ValueError:
                    await self._error("Invalid JSON: each client event is one JSON object.", "invalid_json")
                    continue
                # The error names the client's event_id only when it is one (a string), as the API echoes it.
                event_id = evt.get("event_id") if isinstance(evt.get("event_id"), str) else None
                try:
                    expect(evt.get("type"), "type", "a string")
                    optional(evt, "event_id", "", "a string")
                    handler = handlers.get(evt["type"])
                    if handler is None:
                        raise SessionError(f"Invalid value: {evt['type']!r}. Supported values are: "
                                           f"{', '.join(map(repr, handlers))}.", "invalid_value", "type")
                    await handler(evt)
                except Invalid as exc:
                    await self._error(str(exc), exc.code, exc.param, event_id)
                except ConnectionClosed:
                    raise
                except Exception:  # a fault of the emulator's fails this event, as the API's would, not the session
                    logger.exception(f"realtime emulator: {evt.get('type')!r} event failed")
                    await self._error("The server had an error while processing your request.", "server_error",
                                      event_id=event_id, type_="server_error")
        except ConnectionClosed:
            pass
        finally:
            if self.response and self.response.task:
                self.response.task.cancel()
            for task in self.understanding:
                task.cancel()

    async def _send(self, type_: str, **payload) -> None:
        await self.ws.send(json.dumps({"type": type_, "event_id": _id("event"), **payload}))

    async def _send_quietly(self, type_: str, **payload) -> None:
        """For tasks of their own, which outlive a closed socket by a moment."""
        with contextlib.suppress(ConnectionClosed):
            await self._send(type_, **payload)

    async def _error(self, message: str, code: str, param: str | None = None, event_id: str | None = None,
                     type_: str = "invalid_request_error") -> None:
        await self._send("error", error={"type": type_, "code": code, "message": message, "param": param,
                                         "event_id": event_id})

    def _format(self, direction: str) -> tuple[str, int]:
        fmt = self.session["audio"][direction]["format"]
        return FORMATS[fmt["type"]]

    def _configure_input(self) -> None:
        encoding, rate = self._format("input")
        td = self.session["audio"]["input"]["turn_detection"]
        self.buffer.clear()
        self.segmenter = None if not td else audio.Segmenter(
            rate, threshold=td.get("threshold") or 0.5, stop_secs=(td.get("silence_duration_ms") or 500) / 1000,
            preroll_secs=(td.get("prefix_padding_ms") or 300) / 1000)

    # --- session and input audio ---------------------------------------------------------------------------

    async def _session_update(self, evt: dict) -> None:
        before = (self.session["audio"]["input"]["format"], self.session["audio"]["input"]["turn_detection"])
        update_session(self.session, evt.get("session"))
        if (self.session["audio"]["input"]["format"], self.session["audio"]["input"]["turn_detection"]) != before:
            self._configure_input()
        await self._send("session.updated", session=self.session)

    async def _append(self, evt: dict) -> None:
        try:
            data = base64.b64decode(evt["audio"], validate=True)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise SessionError("Invalid 'audio': expected base64-encoded audio bytes.", "invalid_value",
                               "audio") from exc
        encoding, rate = self._format("input")
        pcm = audio.decode(data, encoding)
        self.heard_secs += len(pcm) / 2 / rate
        if self.segmenter is None:
            self.buffer += pcm
            return
        for seg in await audio.feed(self.segmenter, pcm):
            if seg.kind == "start":
                self.speech_item = _id("item")
                await self._send("input_audio_buffer.speech_started", audio_start_ms=int(seg.at * 1000),
                                 item_id=self.speech_item)
                td = self.session["audio"]["input"]["turn_detection"] or {}
                if self.response and td.get("interrupt_response", True):
                    await self._cancel("turn_detected")
            elif seg.kind == "stop":
                item_id = self.speech_item or _id("item")
                await self._send("input_audio_buffer.speech_stopped", audio_end_ms=int(seg.at * 1000), item_id=item_id)
                td = self.session["audio"]["input"]["turn_detection"] or {}
                await self._commit(seg.audio, rate, item_id, respond=td.get("create_response", True))

    async def _commit_buffer(self, evt: dict) -> None:
        _, rate = self._format("input")
        seg = self.segmenter.take() if self.segmenter else None
        pcm = seg.audio if seg else bytes(self.buffer)
        if len(pcm) / 2 / rate < 0.1:
            raise SessionError(f"Error committing input audio buffer: buffer too small. Expected at least 100ms of "
                               f"audio, but buffer only has {len(pcm) / 2 / rate * 1000:.2f}ms of audio.",
                               "input_audio_buffer_commit_empty")
        self.buffer.clear()
        await self._commit(pcm, rate, self.speech_item if seg else _id("item"), respond=False)

    async def _clear_buffer(self, evt: dict) -> None:
        self.buffer.clear()
        if self.segmenter:
            self.segmenter.take()
        await self._send("input_audio_buffer.cleared")

    async def _commit(self, pcm: bytes, rate: int, item_id: str, *, respond: bool) -> None:
        self.speech_item = None
        await self._send("input_audio_buffer.committed", previous_item_id=self._last_id(), item_id=item_id)
        item = {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        await self._add(item)
        task = asyncio.create_task(self._understand(item, pcm, rate, respond))
        self.understanding.add(task)
        task.add_done_callback(self.understanding.discard)

    async def _understand(self, item: dict, pcm: bytes, rate: int, respond: bool) -> None:
        """Whisper hears the turn: the model's understanding, and the transcription events when asked for."""
        wanted = bool(self.session["audio"]["input"].get("transcription"))
        try:
            text = await local_models.run_inference(audio.transcribe, pcm, rate)
        except Exception as exc:
            logger.exception("realtime emulator: transcription failed")
            text = ""
            if wanted:
                await self._send_quietly("conversation.item.input_audio_transcription.failed", item_id=item["id"],
                                         content_index=0, error={"type": "transcription_error", "code": None,
                                                                 "message": str(exc), "param": None})
                wanted = False
        item["content"][0]["transcript"] = text
        if wanted:
            await self._send_quietly("conversation.item.input_audio_transcription.delta", item_id=item["id"],
                                     content_index=0, delta=text)
            await self._send_quietly("conversation.item.input_audio_transcription.completed", item_id=item["id"],
                                     content_index=0, transcript=text,
                                     usage={"type": "duration", "seconds": round(len(pcm) / 2 / rate, 2)})
        if respond and not self.response:
            self._start_response({})

    # --- conversation items --------------------------------------------------------------------------------

    def _last_id(self) -> str | None:
        return next(reversed(self.items), None)

    async def _add(self, item: dict) -> None:
        previous = self._last_id()
        self.items[item["id"]] = item
        await self._send("conversation.item.added", previous_item_id=previous, item=item)
        if item.get("status") == "completed":
            await self._send("conversation.item.done", previous_item_id=previous, item=item)

    async def _item_create(self, evt: dict) -> None:
        item = evt.get("item")
        if not isinstance(item, dict):
            raise SessionError("Missing required parameter: 'item'.", "missing_required_parameter", "item")
        kind = item.get("type")
        if kind not in ("message", "function_call", "function_call_output"):
            raise SessionError(f"Invalid value: {kind!r}. Supported values are: 'message', 'function_call', and "
                               "'function_call_output'.", "invalid_value", "item.type")
        if kind == "message" and item.get("role") not in ("user", "assistant", "system"):
            raise SessionError("Invalid 'item.role'.", "invalid_value", "item.role")
        check_item(item)
        if kind != "message" and not item.get("call_id"):
            raise SessionError("Missing required parameter: 'item.call_id'.", "missing_required_parameter",
                               "item.call_id")
        if item.get("id") in self.items:
            raise SessionError(f"Item with id {item['id']!r} already exists.", "invalid_value", "item.id")
        item = {**item, "id": item.get("id") or _id("item"), "object": "realtime.item", "status": "completed"}
        await self._add(item)

    @staticmethod
    def _item_id(evt: dict) -> str | None:
        return optional(evt, "item_id", "", "a string")

    async def _item_truncate(self, evt: dict) -> None:
        item = self.items.get(self._item_id(evt))
        if not item or item.get("role") != "assistant":
            raise SessionError(f"Item {evt.get('item_id')!r} is not an assistant message.", "invalid_value", "item_id")
        optional(evt, "content_index", "", "an integer")
        end_ms = max(0, optional(evt, "audio_end_ms", "", "an integer") or 0)
        for part in item.get("content") or []:
            part["transcript"] = None  # as the API does: the text no longer matches what was heard
        await self._send("conversation.item.truncated", item_id=item["id"],
                         content_index=evt.get("content_index", 0), audio_end_ms=end_ms)

    async def _item_delete(self, evt: dict) -> None:
        if self.items.pop(self._item_id(evt), None) is None:
            raise SessionError(f"Item {evt.get('item_id')!r} does not exist.", "invalid_value", "item_id")
        await self._send("conversation.item.deleted", item_id=evt["item_id"])

    async def _item_retrieve(self, evt: dict) -> None:
        item = self.items.get(self._item_id(evt))
        if item is None:
            raise SessionError(f"Item {evt.get('item_id')!r} does not exist.", "item_retrieve_invalid_item_id",
                               "item_id")
        await self._send("conversation.item.retrieved", item=item)


async def start(host: str = "127.0.0.1", port: int = 0, *, rules: Rules | None = None, latency_ms: int = 0) -> Running:
    rules = rules or Rules()

    sessions: list[dict] = []  # each connection's session config, as last updated (tests read it)

    async def handler(connection: ServerConnection) -> None:
        model = parse_qs(urlsplit(connection.request.path).query)["model"][-1]
        session = _Session(connection, model, rules, latency_ms / 1000)
        sessions.append(session.session)
        await session.run()

    def select_subprotocol(connection: ServerConnection, offered) -> str | None:
        # Browsers authenticate with subprotocols ("realtime", "openai-insecure-api-key.KEY") and need one picked.
        return "realtime" if "realtime" in offered else None

    bound, stop = await start_ws(handler, _process_request, host, port, select_subprotocol=select_subprotocol)
    return Running(f"ws://{url_host(host)}:{bound}/v1/realtime", bound, "VOXLINE_OPENAI_REALTIME_URL", sessions, stop)
