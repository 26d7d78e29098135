"""A call's LLM client builds each streamed chunk by validation (fast) and falls back to the SDK's lenient
construction for what validation refuses; either way the chunks are the ones the stock SDK client yields. A real
HTTP listener on loopback streams the reply."""

from __future__ import annotations

import json
import socket
import threading

import openai._base_client
import pytest
from openai import AsyncOpenAI

from pipelines.providers.openai_llm import ChunkValidatingAsyncOpenAI, SharedTLSOpenAILLMService


def _chunk(n: int, content: str | None, finish: str | None = None, **extra) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": finish}],
            **extra}


CHUNKS = [
    _chunk(0, "We are", system_fingerprint="fp_1"),
    _chunk(1, " at twelve Main Street."),
    _chunk(2, None, finish="eos"),  # not one of OpenAI's finish reasons: some compatible servers send their own
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "m", "choices": [],
     "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}, "x_server": {"queue_ms": 3}},
]


@pytest.fixture
def sse_server():
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in CHUNKS) + "data: [DONE]\n\n"
    response = ("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
                f"content-length: {len(body.encode())}\r\n\r\n{body}").encode()
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(rest) < length:
                    rest += conn.recv(65536)
                conn.sendall(response)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    stop.set()
    thread.join(2)
    server.close()


async def _stream(client: AsyncOpenAI) -> list:
    stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Where?"}],
                                                  stream=True)
    return [chunk async for chunk in stream]


async def test_chunks_are_validated_and_equal_to_the_sdks(sse_server, monkeypatch):
    constructed = []
    construct = openai._base_client.construct_type

    def counting(*, type_, value):
        constructed.append(value)
        return construct(type_=type_, value=value)

    monkeypatch.setattr(openai._base_client, "construct_type", counting)
    service = SharedTLSOpenAILLMService(api_key="k", base_url=sse_server)
    assert isinstance(service._client, ChunkValidatingAsyncOpenAI)
    fast = await _stream(service._client)
    # only the chunk that validation refuses (the unknown finish reason) took the SDK's lenient construction
    assert constructed == [CHUNKS[2]]
    constructed.clear()
    stock = await _stream(AsyncOpenAI(api_key="k", base_url=sse_server))
    assert len(constructed) == len(CHUNKS)
    assert fast == stock
    assert [type(c) for c in fast] == [type(c) for c in stock]
    assert fast[2].choices[0].finish_reason == "eos"
    assert fast[3].usage.total_tokens == 16 and fast[3].model_extra == {"x_server": {"queue_ms": 3}}
    assert "".join(c.choices[0].delta.content or "" for c in fast if c.choices) == "We are at twelve Main Street."


WARMED_THEN_A_CALLS_REQUEST = """
import asyncio, json, sys
from openai._utils import _transform
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.processors.aggregators.llm_context import LLMContext
from pipelines.providers.openai_llm import SharedTLSOpenAILLMService, warm_up

cold = _transform.get_type_hints.cache_info().currsize
text = warm_up()
warm = _transform.get_type_hints.cache_info()

async def a_calls_turn():
    llm = SharedTLSOpenAILLMService(api_key="k", base_url=sys.argv[1], settings=SharedTLSOpenAILLMService.Settings(model="m"))
    tools = ToolsSchema(standard_tools=[FunctionSchema(name="end_call", description="Hang up.",
                                                       properties={"reason": {"type": "string"}}, required=[])])
    context = LLMContext(messages=[{"role": "user", "content": "Where?"}], tools=tools)
    return [c async for c in await llm.get_chat_completions(context)]

chunks = asyncio.run(a_calls_turn())
after = _transform.get_type_hints.cache_info()
from pipelines.providers import openai_params
print(json.dumps({"cold": cold, "text": text, "chunks": len(chunks), "new": after.misses - warm.misses,
                  "warmed": warm.currsize, "around_the_walk": openai_params.taken}))
"""


def test_the_sdks_first_request_is_paid_at_start_up(sse_server):
    """`warm_up()` (run by the server at start-up) streams one request through the SDK inside the process; a call's
    first request then builds nothing new in the SDK's type-hint cache, the first-request work that otherwise
    stalls every call's audio on the first turn after start. In a fresh interpreter, so the caches start cold."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", WARMED_THEN_A_CALLS_REQUEST, sse_server], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["cold"] == 0 and got["text"] == "ok", got
    assert got["chunks"] == len(CHUNKS), got
    # The call's body (plain JSON) went around the SDK's walk (openai_params.py); the walk's caches were built at
    # start-up for a body that would take it, and the call built none.
    assert got["around_the_walk"] >= 2 and got["warmed"] >= 10 and got["new"] == 0, json.dumps(got)
