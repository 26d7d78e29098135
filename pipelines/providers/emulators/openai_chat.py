"""OpenAI chat completions emulator: `POST /v1/chat/completions` (SSE streaming or not) and `GET /v1/models`.

Point voxline at it with `VOXLINE_OPENAI_BASE_URL=http://HOST:PORT/v1` (or an agent's `llm.base_url`).
Faults for tests: a rule's `fault`, `ChatEmulator.inject()`, or `POST /_emulator/faults {"fault": ..., "count": n}`.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import deque

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pipelines.providers.emulators.rules import FAULTS, Decision, Rules, estimate_tokens, message_text, tool_names
from pipelines.providers.emulators.server import Running, start_asgi, url_host
from pipelines.providers.emulators.validation import Invalid, expect, one_of, optional, parse_json

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano")


class StreamDropped(Exception):
    """Raised inside a streaming body: the server then cuts the connection with the response half sent."""


def error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
          param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


def fault_response(fault: str) -> JSONResponse:
    if fault == "rate_limit":
        return error(429, "Rate limit reached for requests (emulated).", "requests", "rate_limit_exceeded")
    return error(500, "The server had an error while processing your request. Sorry about that!", "server_error")


def _pieces(text: str, size: int | None = None) -> list[str]:
    if size:
        return [text[i:i + size] for i in range(0, len(text), size)] or [""]
    return re.findall(r"\S+\s*|\s+", text) or [""]


class ChatEmulator:
    def __init__(self, rules: Rules | None = None, *, latency_ms: int = 0, token_ms: int = 0):
        """`latency_ms`: before each response; `token_ms`: between a streamed reply's chunks after its first, as a
        model writes them (a real one: ~10-20 ms a token)."""
        self.rules = rules or Rules()
        self.latency = latency_ms / 1000
        self.token_pace = token_ms / 1000
        self.faults: deque[str] = deque()
        self.requests: list[dict] = []  # every accepted request body, for tests to inspect
        self.peers: list[tuple[str, int]] = []  # the client address of each, one per connection it came on

    def inject(self, fault: str, count: int = 1) -> None:
        """The next `count` chat requests fail with `fault` (server_error, rate_limit, drop_stream)."""
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(FAULTS)}")
        self.faults.extend([fault] * count)

    def app(self):
        async def not_found(request: Request, exc: HTTPException) -> Response:
            return error(exc.status_code, f"Invalid URL ({request.method} {request.url.path})")

        async def crashed(request: Request, exc: Exception) -> Response:
            # A fault of the emulator's still answers in OpenAI's shape (Starlette logs the traceback as well).
            return error(500, "The server had an error while processing your request. Sorry about that!",
                         "server_error")

        inner = Starlette(
            routes=[
                Route("/v1/chat/completions", self._completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/models/{model:path}", self._model, methods=["GET"]),
                Route("/_emulator/faults", self._inject, methods=["POST"]),
            ],
            exception_handlers={HTTPException: not_found, Exception: crashed},
        )

        async def app(scope, receive, send):
            try:
                await inner(scope, receive, send)
            except StreamDropped:
                pass  # the server closes a half-sent response: the fault, without a traceback in the log

        return app

    @staticmethod
    def _unauthorized(request: Request) -> JSONResponse | None:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            return error(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                              "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
        return None

    async def _models(self, request: Request) -> Response:
        if refused := self._unauthorized(request):
            return refused
        return JSONResponse({"object": "list", "data": [_model(m) for m in MODELS]})

    async def _model(self, request: Request) -> Response:
        if refused := self._unauthorized(request):
            return refused
        return JSONResponse(_model(request.path_params["model"]))

    async def _inject(self, request: Request) -> Response:
        body = await request.json()
        try:
            self.inject(body.get("fault", ""), int(body.get("count", 1)))
        except ValueError as exc:
            return error(400, str(exc))
        return JSONResponse({"queued": list(self.faults)})

    async def _completions(self, request: Request) -> Response:
        if refused := self._unauthorized(request):
            return refused
        try:
            body = parse_json(await request.body())
        except ValueError:
            return error(400, "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                              "using your HTTP library correctly.)")
        if not isinstance(body, dict) or not body.get("model"):
            return error(400, "you must provide a model parameter", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return error(400, "Missing required parameter: 'messages'.", code="missing_required_parameter",
                         param="messages")
        try:
            _check_body(body)
        except Invalid as exc:
            return error(400, str(exc), code=exc.code, param=exc.param)
        self.requests.append(body)
        self.peers.append(tuple(request.client) if request.client else ("", 0))
        tools = set() if body.get("tool_choice") == "none" else tool_names(body.get("tools"))
        decision = self.rules.decide(messages, tools)
        fault = self.faults.popleft() if self.faults else decision.fault
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault and (fault != "drop_stream" or not body.get("stream")):
            return fault_response(fault)
        completion = _Completion(body, decision, messages, self.token_pace)
        if body.get("stream"):
            return StreamingResponse(completion.chunks(drop=fault == "drop_stream"), media_type="text/event-stream")
        return JSONResponse(completion.whole())


_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _check_body(body: dict) -> None:
    """The request fields the emulator reads, type-checked as the API does before it answers: a wrong type is a
    400 naming the field, not a 500 from deep inside the reply, nor a value read as something it is not."""
    expect(body["model"], "model", "a string")
    for i, message in enumerate(body["messages"]):
        at = f"messages[{i}]"
        expect(message, at, "an object")
        if "role" not in message:
            raise Invalid(f"Missing required parameter: '{at}.role'.", "missing_required_parameter", at + ".role")
        one_of(message["role"], at + ".role", _ROLES)
        optional(message, "content", at + ".", "a string", "an array", "null")
        optional(message, "tool_call_id", at + ".", "a string")
        for j, call in enumerate(optional(message, "tool_calls", at + ".", "an array") or []):
            expect(call, f"{at}.tool_calls[{j}]", "an object")
            function = expect(call.get("function"), f"{at}.tool_calls[{j}].function", "an object")
            optional(call, "id", f"{at}.tool_calls[{j}].", "a string")
            optional(function, "name", f"{at}.tool_calls[{j}].function.", "a string")
            optional(function, "arguments", f"{at}.tool_calls[{j}].function.", "a string")
    for i, tool in enumerate(optional(body, "tools", "", "an array") or []):
        at = f"tools[{i}]"
        expect(tool, at, "an object")
        if "type" not in tool:
            raise Invalid(f"Missing required parameter: '{at}.type'.", "missing_required_parameter", at + ".type")
        kind = one_of(tool["type"], at + ".type", ("function", "custom"))
        spec = tool.get(kind)
        if spec is None:
            raise Invalid(f"Missing required parameter: '{at}.{kind}'.", "missing_required_parameter", f"{at}.{kind}")
        expect(spec, f"{at}.{kind}", "an object")
        if not isinstance(spec.get("name"), str) or not spec["name"]:
            raise Invalid(f"Missing required parameter: '{at}.{kind}.name'.", "missing_required_parameter",
                          f"{at}.{kind}.name")
        optional(spec, "parameters", f"{at}.{kind}.", "an object")
    choice = optional(body, "tool_choice", "", "a string", "an object")
    if isinstance(choice, str):
        one_of(choice, "tool_choice", ("none", "auto", "required"))
    optional(body, "stream", "", "a boolean", "null")
    options = optional(body, "stream_options", "", "an object", "null") or {}
    optional(options, "include_usage", "stream_options.", "a boolean")


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "voxline-emulator"}


class _Completion:
    def __init__(self, body: dict, decision: Decision, messages: list[dict], token_pace: float = 0.0):
        self.token_pace = token_pace
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = body["model"]
        self.decision = decision
        self.call_id = "call_" + secrets.token_hex(12)
        opts = body.get("stream_options") or {}
        self.include_usage = bool(opts.get("include_usage"))
        prompt = sum(estimate_tokens(message_text(m)) for m in messages if isinstance(m, dict)) + 3 * len(messages)
        out = decision.text or (decision.tool_call.arguments if decision.tool_call else "")
        completion = estimate_tokens(out) + (8 if decision.tool_call else 0)
        self.usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}

    def _envelope(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "fp_emulator", "service_tier": "default"}

    def whole(self) -> dict:
        message: dict = {"role": "assistant", "content": self.decision.text or None, "refusal": None, "annotations": []}
        finish = "stop"
        if call := self.decision.tool_call:
            message["tool_calls"] = [{"id": self.call_id, "type": "function",
                                      "function": {"name": call.name, "arguments": call.arguments}}]
            finish = "tool_calls"
        return {**self._envelope("chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": self.usage}

    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        chunk = {**self._envelope("chat.completion.chunk"),
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self.include_usage:
            chunk["usage"] = None
        return f"data: {json.dumps(chunk)}\n\n".encode()

    async def chunks(self, drop: bool = False):
        call = self.decision.tool_call
        if call:
            opening = {"index": 0, "id": self.call_id, "type": "function",
                       "function": {"name": call.name, "arguments": ""}}
            yield self._chunk({"role": "assistant", "content": None, "refusal": None, "tool_calls": [opening]})
            deltas = [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in _pieces(call.arguments, 8)]
        else:
            yield self._chunk({"role": "assistant", "content": "", "refusal": None})
            deltas = [{"content": p} for p in _pieces(self.decision.text)]
        for i, delta in enumerate(deltas):
            if drop and i >= min(2, len(deltas) // 2):
                raise StreamDropped("emulated fault: stream dropped mid-way")
            # Each chunk goes out on its own, as a token stream does; the first with the response's start.
            await asyncio.sleep(self.token_pace if i else 0)
            yield self._chunk(delta)
        if drop:
            raise StreamDropped("emulated fault: stream dropped mid-way")
        yield self._chunk({}, "tool_calls" if call else "stop")
        if self.include_usage:
            usage = {**self._envelope("chat.completion.chunk"), "choices": [], "usage": self.usage}
            yield f"data: {json.dumps(usage)}\n\n".encode()
        yield b"data: [DONE]\n\n"


async def start(host: str = "127.0.0.1", port: int = 0, *, rules: Rules | None = None, latency_ms: int = 0,
                token_ms: int = 0) -> Running:
    emulator = ChatEmulator(rules, latency_ms=latency_ms, token_ms=token_ms)
    bound, stop = await start_asgi(emulator.app(), host, port)
    return Running(f"http://{url_host(host)}:{bound}/v1", bound, "VOXLINE_OPENAI_BASE_URL", emulator, stop)
