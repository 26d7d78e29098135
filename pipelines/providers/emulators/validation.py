"""Checking what a client sent before an emulator acts on it: JSON that parses to a bounded depth, and OpenAI-style
type errors ("Invalid type for 'x': expected a string, but got an array instead.").

The real services answer a malformed message with an error in their own shape and carry on; the emulators check
types where a message comes in, so that nothing stored from it can break a later step."""

from __future__ import annotations

import json
from typing import Any

# Far below where Python's recursive walkers (json.dumps of an echoed session, copy.deepcopy: two frames a level)
# run out of stack at the default limit of 1000, and far above any real message (tool schemas included).
MAX_DEPTH = 100


class Invalid(Exception):
    """A client message the provider would refuse: OpenAI's `message`, `code` and `param`."""

    def __init__(self, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


def parse_json(text: str | bytes) -> Any:
    """`json.loads`, where too deep a nesting is a ValueError like any other malformed JSON (not a RecursionError)."""
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise ValueError("JSON nested too deeply")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return value


def kind(value: Any) -> str:
    """A JSON value's type as OpenAI's errors name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


_CHECKS = {
    "a string": lambda v: isinstance(v, str),
    "a boolean": lambda v: isinstance(v, bool),
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "an object": lambda v: isinstance(v, dict),
    "an array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def expect(value: Any, param: str, *kinds: str) -> Any:
    """`value` if it is one of `kinds` (names from _CHECKS), else Invalid naming `param`; returns the value."""
    if any(_CHECKS[k](value) for k in kinds):
        return value
    named = [k for k in kinds if k != "null"] or ["null"]  # null stands for "not given": not worth naming
    wanted = named[0] if len(named) == 1 else "one of " + " or ".join(named)
    raise Invalid(f"Invalid type for '{param}': expected {wanted}, but got {kind(value)} instead.", "invalid_type",
                  param)


def optional(container: dict, key: str, where: str, *kinds: str) -> Any:
    """container[key] checked as `kinds` when present (null allowed when "null" is among them)."""
    if key not in container:
        return None
    return expect(container[key], f"{where}{key}", *kinds)


def one_of(value: Any, param: str, allowed: tuple) -> Any:
    if not isinstance(value, str) or value not in allowed:
        raise Invalid(f"Invalid value: {value!r}. Supported values are: {', '.join(map(repr, allowed))}.",
                      "invalid_value", param)
    return value
