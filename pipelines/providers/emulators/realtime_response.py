"""Realtime responses: create, cancel, and write them (output items, content parts, deltas, `response.done`).

A mixin of the session in openai_realtime.py, whose `_send`, `_add`, `session`, `items`, `rules`, `understanding`
and `response` it uses.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from dataclasses import dataclass, field

from loguru import logger
from websockets.exceptions import ConnectionClosed

from pipelines.providers import local_models
from pipelines.providers.emulators import audio
from pipelines.providers.emulators.realtime_session import (
    FORMATS, SessionError, check_response_fields, item_messages, new_id,
)
from pipelines.providers.emulators.rules import ToolCall, tool_names
from pipelines.providers.emulators.validation import optional

DELTA_SECS = 0.1


@dataclass
class ActiveResponse:
    id: str
    modalities: list[str]
    output: list[dict] = field(default_factory=list)
    task: asyncio.Task | None = None
    text_chars: int = 0
    audio_secs: float = 0.0


class Responding:
    async def _response_create(self, evt: dict) -> None:
        if self.response:
            raise SessionError(f"Conversation already has an active response in progress: {self.response.id}. Wait "
                               "until the response is finished before creating a new one.",
                               "conversation_already_has_active_response")
        # Checked here, where the client hears of it, rather than failing the response it would start.
        props = optional(evt, "response", "", "an object", "null") or {}
        check_response_fields(props, "response.")
        optional(props, "metadata", "response.", "an object", "null")
        optional(props, "conversation", "response.", "a string")
        optional(props, "input", "response.", "an array")
        self._start_response(props)

    async def _response_cancel(self, evt: dict) -> None:
        if not self.response:
            raise SessionError("Cancellation failed: no active response found", "response_cancel_not_active")
        await self._cancel("client_cancelled")

    def _start_response(self, props: dict) -> None:
        modalities = props.get("output_modalities") or self.session["output_modalities"]
        self.response = ActiveResponse(new_id("resp"), ["audio"] if "audio" in modalities else ["text"])
        self.response.task = asyncio.create_task(self._respond(self.response, props))

    async def _cancel(self, reason: str) -> None:
        resp, self.response = self.response, None
        resp.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resp.task
        for item in resp.output:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
        await self._send("response.done", response=self._snapshot(resp, "cancelled",
                                                                  {"type": "cancelled", "reason": reason}))

    async def _respond(self, resp: ActiveResponse, props: dict) -> None:
        try:
            if self.understanding:  # a turn still being heard is part of what this response answers
                await asyncio.wait(self.understanding)
            if self.latency:
                await asyncio.sleep(self.latency)
            await self._send("response.created", response=self._snapshot(resp, "in_progress"))
            tools = props.get("tools") if props.get("tools") is not None else self.session["tools"]
            choice = props.get("tool_choice") or self.session["tool_choice"]
            decision = self.rules.decide(item_messages(self.session, self.items.values()),
                                         set() if choice == "none" else tool_names(tools))
            if decision.fault == "drop_stream":
                self.response = None
                await self.ws.close(1011, "emulated fault: connection dropped")
                return
            if decision.fault:
                code = "rate_limit_exceeded" if decision.fault == "rate_limit" else "server_error"
                error = {"type": "server_error" if code == "server_error" else "requests", "code": code,
                         "message": "The server had an error while processing your request (emulated fault)."}
                await self._finish(resp, "failed", {"type": "failed", "error": error})
                return
            if decision.tool_call:
                await self._function_call(resp, decision.tool_call)
            else:
                await self._message(resp, decision.text)
            await self._finish(resp, "completed")
        except ConnectionClosed:
            pass
        except Exception as exc:  # a model failure fails this response, as the API reports one, not the session
            logger.exception("realtime emulator: response failed")
            error = {"type": "server_error", "code": "server_error", "message": str(exc)}
            with contextlib.suppress(ConnectionClosed):
                await self._finish(resp, "failed", {"type": "failed", "error": error})
        finally:
            if self.response is resp:
                self.response = None

    def _snapshot(self, resp: ActiveResponse, status: str, details: dict | None = None) -> dict:
        out_tokens = resp.text_chars // 4 + int(resp.audio_secs * 20)
        in_text = sum(len(json.dumps(i)) for i in self.items.values()) // 16
        in_audio = int(self.heard_secs * 10)
        usage = None if status == "in_progress" else {
            "total_tokens": in_text + in_audio + out_tokens, "input_tokens": in_text + in_audio,
            "output_tokens": out_tokens,
            "input_token_details": {"text_tokens": in_text, "audio_tokens": in_audio, "image_tokens": 0,
                                    "cached_tokens": 0, "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0}},
            "output_token_details": {"text_tokens": resp.text_chars // 4, "audio_tokens": int(resp.audio_secs * 20)},
        }
        out = self.session["audio"]["output"]
        return {"object": "realtime.response", "id": resp.id, "status": status, "status_details": details,
                "output": resp.output, "conversation_id": "conv_" + self.session["id"][5:],
                "output_modalities": resp.modalities, "max_output_tokens": self.session["max_output_tokens"],
                "audio": {"output": {"format": out["format"], "voice": out["voice"]}}, "usage": usage, "metadata": None}

    async def _finish(self, resp: ActiveResponse, status: str, details: dict | None = None) -> None:
        if self.response is resp:
            self.response = None
        await self._send("response.done", response=self._snapshot(resp, status, details))

    async def _open_item(self, resp: ActiveResponse, item: dict) -> dict:
        resp.output.append(item)
        await self._send("response.output_item.added", response_id=resp.id, output_index=len(resp.output) - 1,
                         item=item)
        await self._add(item)
        return {"response_id": resp.id, "item_id": item["id"], "output_index": len(resp.output) - 1}

    async def _close_item(self, resp: ActiveResponse, item: dict, where: dict) -> None:
        item["status"] = "completed"
        await self._send("response.output_item.done", response_id=resp.id, output_index=where["output_index"],
                         item=item)
        await self._send("conversation.item.done", previous_item_id=None, item=item)

    async def _function_call(self, resp: ActiveResponse, call: ToolCall) -> None:
        item = {"id": new_id("item"), "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "name": call.name, "call_id": new_id("call"), "arguments": ""}
        where = await self._open_item(resp, item)
        for i in range(0, len(call.arguments), 8):
            await self._send("response.function_call_arguments.delta", **where, call_id=item["call_id"],
                             delta=call.arguments[i:i + 8])
        item["arguments"] = call.arguments
        resp.text_chars += len(call.arguments)
        await self._send("response.function_call_arguments.done", **where, call_id=item["call_id"], name=call.name,
                         arguments=call.arguments)
        await self._close_item(resp, item, where)

    async def _message(self, resp: ActiveResponse, text: str) -> None:
        spoken = resp.modalities == ["audio"]
        part = {"type": "output_audio", "transcript": ""} if spoken else {"type": "output_text", "text": ""}
        item = {"id": new_id("item"), "object": "realtime.item", "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}
        where = {**await self._open_item(resp, item), "content_index": 0}
        await self._send("response.content_part.added", **where, part=dict(part))
        item["content"].append(part)
        encoding, rate = FORMATS[self.session["audio"]["output"]["format"]["type"]]
        step = int(audio.bytes_per_second(encoding, rate) * DELTA_SECS)
        pieces = audio.sentences(text) or [text]
        for n, sentence in enumerate(pieces):
            piece = sentence + (" " if n < len(pieces) - 1 else "")
            resp.text_chars += len(piece)
            if not spoken:
                part["text"] += piece
                await self._send("response.output_text.delta", **where, delta=piece)
                continue
            part["transcript"] += piece
            await self._send("response.output_audio_transcript.delta", **where, delta=piece)
            pcm = await local_models.run_inference(audio.synthesize, sentence, rate)
            resp.audio_secs += len(pcm) / 2 / rate
            wire = audio.encode(pcm, encoding)
            for i in range(0, len(wire), step):
                chunk = base64.b64encode(wire[i:i + step]).decode()
                await self._send("response.output_audio.delta", **where, delta=chunk)
                await asyncio.sleep(0)  # a response.cancel read meanwhile stops the rest
        if spoken:
            await self._send("response.output_audio.done", **where)
            await self._send("response.output_audio_transcript.done", **where, transcript=part["transcript"])
        else:
            await self._send("response.output_text.done", **where, text=part["text"])
        await self._send("response.content_part.done", **where, part=part)
        await self._close_item(resp, item, where)

