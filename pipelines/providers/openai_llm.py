"""pipecat's OpenAI LLM service, with one TLS context and one connection pool for every call's client, and a bound
on a silent LLM.

pipecat builds an AsyncOpenAI client per service, and its HTTP client loads the system's CA store into a new TLS
context (~60 ms, on the event loop, while every other call's audio waits). Calls share the process's one
(pipelines/providers/tls.py).

Connections are shared too, when the server hands the service its pool (`shared_pool()`, one per server process,
for endpoints the operator configured or trusts). Otherwise every call's first turn, and every chat turn, which
builds its own service, dialled a new connection: a DNS lookup, TCP's round trip and TLS's, before the request
could leave, on the path to the reply's first word. Requests carry their own key, so one pool serves every
workspace. An agent's own untrusted `base_url` keeps a client and pool of its own (endpoint_guard.py).

An OpenAI-compatible server that accepts the request and then sends nothing (hung, overloaded) would otherwise hold
the turn for the SDK's 600 s read timeout, three times over with its retries, and the caller would hear silence
until call.max_duration_secs. Here the reply must start within `timeout_secs` and may not pause longer than that
between chunks; past either, the turn fails with `LLMResponseTimeout`, which takes the path of every other LLM
failure (on a call: the apology, then `error_llm`; in a chat: an `error` event).

Each streamed chunk (a reply is ~30 of them) is built by the SDK's lenient `construct_type`, pure Python walking
the model's fields: ~54 µs a chunk on this VM, against ~2.6 µs for pydantic's own validation of the same dict,
which gives an equal object. So a chunk is validated first, and what validation refuses (an OpenAI-compatible
server's own shapes: another `object`, an unknown `finish_reason`) still gets the SDK's lenient construction.

The SDK's first request in a process costs ~30-50 ms of CPU that later ones do not (type-hint caches for its
request transform, modules it imports lazily, pydantic's generic submodels): a stall of every call's audio on the
first turn after start. `warm_up()` pays it at start-up, with one streamed request answered inside the process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pydantic
from openai import APITimeoutError, AsyncOpenAI, DefaultAsyncHttpxClient
from openai.types.chat import ChatCompletionChunk
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.utils.http import TIMEOUT_EXCEPTIONS, connection_limits

from pipelines.providers import openai_params
from pipelines.providers.endpoint_guard import public_only_client
from pipelines.providers.tls import tls_context

DEFAULT_TIMEOUT_SECS = 10.0  # as LLMConfig.timeout_secs, which explains it


# pipecat 1.14's limits for its OpenAI clients. With no expiry an idle connection is kept until the server closes it
# (httpcore notices that before reusing it), so a quiet minute does not cost the next call a handshake.
_LIMITS = connection_limits(max_keepalive_connections=100, max_connections=1000, keepalive_expiry=None)


def shared_pool() -> httpx.AsyncClient:
    """A connection pool for every call's client to trusted endpoints: make it on the event loop that will use it,
    and `aclose()` it when the server stops."""
    return DefaultAsyncHttpxClient(verify=tls_context(), limits=_LIMITS)


class LLMResponseTimeout(TimeoutError):
    """The LLM sent nothing for `timeout_secs`: before the first chunk of its reply, or between two chunks.

    A TimeoutError, so pipecat files it as a connectivity fault. Not one of httpx's timeouts, so pipecat reports it
    with this message ("Error during completion: no response within 10 s") instead of a bare "LLM completion
    timeout", and the call's `error_detail` says what happened and after how long."""


class ChunkValidatingAsyncOpenAI(AsyncOpenAI):
    def _process_response_data(self, *, data: object, cast_to: Any, **kwargs: Any) -> Any:
        if cast_to is ChatCompletionChunk and type(data) is dict:
            try:
                return ChatCompletionChunk.model_validate(data)
            except pydantic.ValidationError:
                pass
        return super()._process_response_data(data=data, cast_to=cast_to, **kwargs)


class SharedTLSOpenAILLMService(OpenAILLMService):
    def __init__(self, *, timeout_secs: float = DEFAULT_TIMEOUT_SECS, public_only_for: str | None = None,
                 pool: httpx.AsyncClient | None = None, **kwargs: Any):
        """`public_only_for`: who the base URL is (for log lines), when it may reach only public addresses
        (pipelines/providers/endpoint_guard.py). `pool`: the server's `shared_pool()`, used unless the endpoint is
        public-only; without one, the service makes its own."""
        # Before the base __init__, which calls create_client.
        self._timeout_secs = timeout_secs
        self._public_only_for = public_only_for
        self._pool = pool
        super().__init__(**kwargs)

    def create_client(self, api_key=None, base_url=None, organization=None, project=None, default_headers=None,
                      **kwargs):
        # As pipecat 1.14's BaseOpenAILLMService.create_client, with `verify` given, and the SDK's own timeouts
        # (600 s read) cut to timeout_secs, so that no read on this client's sockets outlasts the bound that
        # get_chat_completions enforces. The SDK keeps its 2 quick retries (a refused connection, a 5xx): they run
        # inside that bound, which still ends the turn on time.
        # Nothing closes this client (pipecat never does), so a shared pool outlives the call.
        if self._public_only_for is not None:
            http_client = public_only_client(who=self._public_only_for, field="llm.base_url", verify=tls_context(),
                                             limits=_LIMITS)
        else:
            http_client = self._pool or shared_pool()
        return ChunkValidatingAsyncOpenAI(
            api_key=api_key, base_url=base_url, organization=organization, project=project,
            http_client=http_client, default_headers=default_headers, timeout=self._timeout_secs,
        )

    async def get_chat_completions(self, context):
        """The reply's chunk stream, its first chunk due within timeout_secs of the request, each next one within
        timeout_secs of the one before (raising LLMResponseTimeout otherwise)."""
        limit = self._timeout_secs
        first_by = asyncio.get_running_loop().time() + limit
        try:
            # The SDK returns the stream once the response headers are in: a server that never answers stops here.
            async with asyncio.timeout_at(first_by):
                stream = await super().get_chat_completions(context)
        except (TimeoutError, APITimeoutError) as exc:
            raise LLMResponseTimeout(f"no response within {limit:g} s") from exc
        return _BoundedStream(stream, first_by, limit)


class _BoundedStream:
    """An SDK chunk stream, as pipecat's _process_context uses it (`__aiter__` and `close`), with deadlines.

    The first chunk must come by `first_by` (event-loop time: the same deadline as the response headers, so the
    whole wait for the reply to start is bounded once), each later one within `gap` seconds of the consumer asking
    for it: the time pipecat spends pushing a chunk's text downstream is not the LLM's."""

    def __init__(self, stream: Any, first_by: float, gap: float):
        self._stream, self._first_by, self._gap = stream, first_by, gap

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        chunks = self._stream.__aiter__()
        deadline, late = self._first_by, f"no response within {self._gap:g} s"
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                # The client's own read timeout (the same length) may fire first: the same fault, the same message.
                except (TimeoutError, *TIMEOUT_EXCEPTIONS) as exc:
                    raise LLMResponseTimeout(late) from exc
                yield chunk
                deadline, late = loop.time() + self._gap, f"the reply stalled: nothing for {self._gap:g} s"
        finally:
            if hasattr(chunks, "aclose"):
                await chunks.aclose()

    async def close(self) -> None:
        await self._stream.close()


_WARM_CHUNK = {"id": "warm-up", "object": "chat.completion.chunk", "created": 0, "model": "warm-up",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]}


_WARM_REQUEST = {
    "model": "warm-up", "stream": True, "stream_options": {"include_usage": True},
    "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t", "content": "{}"},
    ],
    "tools": [{"type": "function", "function": {
        "name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}],
}


def warm_up() -> str:
    """One streamed chat request through the SDK, the way a call's turn makes it (every kind of message, a tool),
    answered in-process: nothing leaves the machine. Blocking (it runs its own loop): call it in a thread at
    start-up, before gc.freeze(). Returns the streamed text."""
    body = f"data: {json.dumps(_WARM_CHUNK)}\n\ndata: [DONE]\n\n".encode()

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    async def request() -> str:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            client = ChunkValidatingAsyncOpenAI(api_key="warm-up", base_url="http://warm-up.invalid/v1",
                                                http_client=http)
            stream = await client.chat.completions.create(**_WARM_REQUEST)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            # A body that is not plain JSON still takes the SDK's own walk (openai_params.py): its caches too.
            await openai_params.warm_sdk_transform(_WARM_REQUEST)
            return text

    return asyncio.run(request())
