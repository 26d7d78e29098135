"""The OpenAI SDK's request transform, skipped where it would return its input unchanged.

Every chat request goes through `async_maybe_transform(body, CompletionCreateParams...)`, which walks the body
against the params' TypedDicts to rename aliased keys, format dates and files, dump pydantic models and drop omitted
values. A call's body is plain JSON (pipecat's adapter builds dicts of strings), so the walk returns an equal copy,
after ~0.3 ms per message of the conversation spent on the event loop at every turn: 1.5 ms at 5 messages, 11 ms at
41 on the AMD VM (bench/llm_request.py), while every call's audio waits and the turn's own reply has not left.

Here a body whose values are all plain JSON (dict with str keys, list, str, int, float, bool, None) goes on as it
is, its omitted top-level arguments dropped as the SDK drops them. Anything else (a pydantic model, a tuple or
generator, a date, a file, an omitted value deeper down) takes the SDK's walk. The params' types are scanned once,
at import, for the one thing that would make the walk change plain JSON (a key alias); were an SDK to add one, every
body would take the SDK's walk again.

The SDK's create() looks the function up in its module at call time: that name is rebound when this module is
imported (by openai_llm.py), and a test fails if the seam moves (tests/test_llm_request_transform.py).
"""

from __future__ import annotations

from typing import Any

import openai.resources.chat.completions.completions as sdk_completions
from openai import NotGiven, Omit
from openai._utils import PropertyInfo
from openai.types.chat import completion_create_params
from typing_extensions import Annotated, get_args, get_origin, get_type_hints, is_typeddict

_sdk_transform = sdk_completions.async_maybe_transform

CHAT_PARAMS = (completion_create_params.CompletionCreateParamsStreaming,
               completion_create_params.CompletionCreateParamsNonStreaming)

_SCALARS = (str, int, float, bool, type(None))  # matched by exact type: a str or int subclass takes the walk


def has_alias(tp: Any, seen: set[int] | None = None) -> bool:
    """Whether any TypedDict reachable from `tp` renames a key (`PropertyInfo(alias=...)`)."""
    seen = set() if seen is None else seen
    if id(tp) in seen:
        return False
    seen.add(id(tp))
    if get_origin(tp) is Annotated:
        if any(isinstance(m, PropertyInfo) and m.alias for m in tp.__metadata__):
            return True
    if is_typeddict(tp):
        hints = get_type_hints(tp, include_extras=True)
        return any(has_alias(hint, seen) for hint in hints.values())
    return any(has_alias(arg, seen) for arg in get_args(tp) if not isinstance(arg, (str, int)))


def plain_json(value: Any) -> bool:
    """True when `value` is built of dicts with str keys, lists and JSON scalars only."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            for key, inner in item.items():
                if type(key) is not str:
                    return False
                stack.append(inner)
        elif kind is list:
            stack.extend(item)
        elif kind not in _SCALARS:
            return False
    return True


FAST = not any(has_alias(tp) for tp in CHAT_PARAMS)
taken = 0  # bodies passed on without the SDK's walk, for tests


async def _transform(data: object, expected_type: object) -> Any:
    global taken
    if FAST and expected_type in CHAT_PARAMS and type(data) is dict:
        body = {key: value for key, value in data.items() if not isinstance(value, (NotGiven, Omit))}
        if plain_json(body):
            taken += 1
            return body
    return await _sdk_transform(data, expected_type)


async def warm_sdk_transform(body: dict) -> None:
    """The SDK's walk once over `body` (a request of every kind of message and a tool), as a request would take it:
    what it builds the first time (the type hints of the TypedDicts it meets) is then built at start-up, not under a
    call."""
    for params in CHAT_PARAMS:
        await _sdk_transform(body, params)


sdk_completions.async_maybe_transform = _transform
