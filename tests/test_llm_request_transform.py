"""A chat request's body skips the OpenAI SDK's transform walk when it is plain JSON, and is then the body the walk
would have given; anything else still takes the walk (pipelines/providers/openai_params.py). The requests go over a
real loopback socket to a listener that records what arrives."""

from __future__ import annotations

import datetime
import json

import openai.resources.chat.completions.completions as sdk_completions
import pydantic
import pytest
from openai import NOT_GIVEN, omit
from openai._utils import PropertyInfo
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.processors.aggregators.llm_context import LLMContext
from typing_extensions import Annotated, Required, TypedDict

from pipelines.providers import openai_params
from pipelines.providers.openai_llm import SharedTLSOpenAILLMService
from tests.test_llm_chunks import sse_server  # noqa: F401  (a fixture: a loopback listener streaming a reply)

STREAMING, NON_STREAMING = openai_params.CHAT_PARAMS

A_CALLS_MESSAGES = [
    {"role": "system", "content": "You are the front desk of Luigi's, a small restaurant."},
    {"role": "assistant", "content": "Hello, thanks for calling Luigi's."},
    {"role": "user", "content": "Where are you located?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"address\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"address\": \"12 Main Street\", \"open\": true}"},
    {"role": "assistant", "content": "We are at twelve Main Street."},
    {"role": "user", "content": [{"type": "text", "text": "And until when?"}]},
]
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look up a fact.", "strict": False,
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                                          "required": ["q"]}}}]


def body(**overrides) -> dict:
    """As the SDK's create() builds it: every argument, the ones not given as `omit` / NOT_GIVEN."""
    base = {"model": "gpt-4o-mini", "stream": True, "messages": A_CALLS_MESSAGES, "tools": TOOLS,
            "tool_choice": "auto", "stream_options": {"include_usage": True}, "temperature": 0.4, "seed": 7,
            "max_tokens": omit, "top_p": NOT_GIVEN, "metadata": {"call": "CA1"}, "logit_bias": {"50256": -100},
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}},
            "stop": ["\n\n"], "user": omit, "parallel_tool_calls": False, "n": 1, "frequency_penalty": 0.0}
    return base | overrides


@pytest.mark.parametrize("params", [STREAMING, NON_STREAMING])
async def test_a_plain_json_body_goes_around_the_walk_and_equals_what_the_walk_gives(params):
    before = openai_params.taken
    got = await sdk_completions.async_maybe_transform(body(), params)
    assert openai_params.taken == before + 1
    assert got == await openai_params._sdk_transform(body(), params)
    assert "max_tokens" not in got and "top_p" not in got and "user" not in got
    assert got["messages"] is A_CALLS_MESSAGES  # not copied: nothing in it changes


class Note(pydantic.BaseModel):
    text: str


@pytest.mark.parametrize("odd", [
    {"messages": [*A_CALLS_MESSAGES, {"role": "user", "content": "x", "name": NOT_GIVEN}]},  # omitted, deeper down
    {"messages": tuple(A_CALLS_MESSAGES)},  # a tuple: the walk makes it a list
    {"messages": (m for m in A_CALLS_MESSAGES)},  # a generator: the same
    {"metadata": {"note": Note(text="a model")}},  # a pydantic model: the walk dumps it
    {"metadata": {"when": datetime.date(2026, 12, 4)}},  # not JSON at all
    {"logit_bias": {50256: -100}},  # a key that is not a string
])
async def test_anything_else_takes_the_sdks_walk(odd):
    before = openai_params.taken
    got = await sdk_completions.async_maybe_transform(body(**odd), STREAMING)
    assert openai_params.taken == before
    if "messages" in odd and not isinstance(odd["messages"], list):
        assert got["messages"] == A_CALLS_MESSAGES  # made a list by the walk
    if "metadata" in odd and isinstance(odd["metadata"].get("note"), Note):
        assert got["metadata"] == {"note": {"text": "a model"}}


async def test_other_requests_of_the_module_take_the_walk():
    before = openai_params.taken
    assert await sdk_completions.async_maybe_transform({"metadata": {"a": "b"}}, dict) == {"metadata": {"a": "b"}}
    assert openai_params.taken == before


class _Inner(TypedDict, total=False):
    card_id: Required[Annotated[str, PropertyInfo(alias="cardID")]]


class _Outer(TypedDict, total=False):
    items: list[_Inner | str]


def test_an_alias_anywhere_in_the_params_would_turn_the_bypass_off():
    assert openai_params.has_alias(_Outer)  # two levels down, inside a union in a list
    assert not any(openai_params.has_alias(params) for params in openai_params.CHAT_PARAMS)
    assert openai_params.FAST


async def test_a_calls_request_through_pipecat_sends_the_body_the_walk_would(sse_server, monkeypatch):  # noqa: F811
    """pipecat's OpenAI service builds a turn's request from the call's context (messages, a tool); it goes around
    the walk, and the JSON that reaches the listener is the JSON the walk would have made of the same body."""
    given: list[tuple[dict, object]] = []
    sent: list[dict] = []

    async def recording_transform(data, expected_type):
        given.append((data, expected_type))
        return await openai_params._transform(data, expected_type)

    monkeypatch.setattr(sdk_completions, "async_maybe_transform", recording_transform)
    llm = SharedTLSOpenAILLMService(api_key="k", base_url=sse_server,
                                    settings=SharedTLSOpenAILLMService.Settings(model="m"))
    http_send = llm._client._client.send

    async def recording_send(request, **kwargs):
        sent.append(json.loads(request.content))
        return await http_send(request, **kwargs)

    monkeypatch.setattr(llm._client._client, "send", recording_send)
    tools = ToolsSchema(standard_tools=[FunctionSchema(name="end_call", description="Hang up.",
                                                       properties={"reason": {"type": "string"}}, required=[])])
    context = LLMContext(messages=[{"role": "user", "content": "Where?"}], tools=tools)
    before = openai_params.taken
    chunks = [c async for c in await llm.get_chat_completions(context)]
    assert chunks and openai_params.taken == before + 1
    assert len(given) == 1 and len(sent) == 1
    walked = await openai_params._sdk_transform(*given[0])
    assert sent[0] == json.loads(json.dumps(walked))
    assert sent[0]["messages"] == [{"role": "user", "content": "Where?"}]
    assert sent[0]["tools"][0]["function"]["name"] == "end_call"


def test_the_sdk_looks_the_walk_up_where_the_bypass_sits():
    # create() calls the module's `async_maybe_transform` at call time: if the SDK moved it, the bypass would be
    # a name nobody calls and this fails.
    assert sdk_completions.async_maybe_transform is openai_params._transform
    import inspect
    assert "async_maybe_transform(" in inspect.getsource(sdk_completions.AsyncCompletions.create)
