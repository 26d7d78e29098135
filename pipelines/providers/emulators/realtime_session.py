"""The Realtime session object: its GA shape, `session.update` (beta field names included), and the conversation
as chat messages for the shared rules."""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Iterable

from pipelines.providers.emulators.rules import message_text
from pipelines.providers.emulators.validation import Invalid, expect, one_of, optional

# GA format type → (codec, rate). G.711 is 8 kHz and goes through untouched; PCM is fixed at 24 kHz.
FORMATS = {"audio/pcm": ("pcm16", 24000), "audio/pcmu": ("mulaw", 8000), "audio/pcma": ("alaw", 8000)}
_BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
_SERVER_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
               "create_response": True, "interrupt_response": True, "idle_timeout_ms": None}
# Fields a response reads, which a null (a client serializing unset fields) leaves as they were.
_KEPT_WHEN_NULL = ("output_modalities", "instructions", "tool_choice", "max_output_tokens")
_KNOWN = {"type", "object", "id", "model", "output_modalities", "instructions", "audio", "tools", "tool_choice",
          "max_output_tokens", "tracing", "prompt", "expires_at", "include", "reasoning", "truncation"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(15)}"


class SessionError(Invalid):
    """A client event the API refuses with an `error` event; the session carries on."""


def default_session(session_id: str, model: str) -> dict:
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
        "output_modalities": ["audio"], "instructions": "",
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": None, "noise_reduction": None,
                      "turn_detection": dict(_SERVER_VAD)},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
        },
        "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None, "prompt": None,
        "expires_at": int(time.time()) + 3600, "include": None,
    }


def _beta_to_ga(update: dict) -> dict:
    """Beta field names (`input_audio_format: g711_ulaw`, top-level `turn_detection`, ...) → the GA layout."""
    update = copy.deepcopy(update)
    audio = update.setdefault("audio", {}) or {}
    update["audio"] = audio
    for side in ("input", "output"):  # a null side is an empty one, which the beta names below may fill
        audio[side] = audio.get(side) or {}
    for beta, side in (("input_audio_format", "input"), ("output_audio_format", "output")):
        if beta in update:
            name = update.pop(beta)
            audio[side]["format"] = {"type": _BETA_FORMATS.get(name, name)}
    for beta, side, key in (("turn_detection", "input", "turn_detection"),
                            ("input_audio_transcription", "input", "transcription"),
                            ("input_audio_noise_reduction", "input", "noise_reduction"),
                            ("voice", "output", "voice")):
        if beta in update:
            audio[side][key] = update.pop(beta)
    if "modalities" in update:
        update["output_modalities"] = ["audio"] if "audio" in update.pop("modalities") else ["text"]
    for key in ("temperature", "max_response_output_tokens"):
        update.pop(key, None)
    return update


def _format(value, where: str) -> dict:
    fmt = value if isinstance(value, dict) else {"type": value}
    if not isinstance(fmt.get("type"), str) or fmt["type"] not in FORMATS:
        raise SessionError(f"Invalid value: {fmt.get('type')!r}. Supported values are: 'audio/pcm', 'audio/pcmu', "
                           "and 'audio/pcma'.", "invalid_value", f"session.audio.{where}.format.type")
    if fmt["type"] == "audio/pcm" and fmt.get("rate", 24000) != 24000:
        raise SessionError("Only a rate of 24000 is supported for audio/pcm.", "invalid_value",
                           f"session.audio.{where}.format.rate")
    if fmt["type"] == "audio/pcm":
        return {"type": "audio/pcm", "rate": 24000}
    return {"type": fmt["type"]}


def update_session(session: dict, update) -> None:
    """Apply a `session.update` in place, or raise Invalid (SessionError included) and leave the session as it was."""
    if not isinstance(update, dict):
        raise SessionError("Missing required parameter: 'session'.", "missing_required_parameter", "session")
    _check_types(update)
    update = _beta_to_ga(update)
    unknown = set(update) - _KNOWN
    if unknown:
        raise SessionError(f"Unknown parameter: 'session.{sorted(unknown)[0]}'.", "unknown_parameter",
                           f"session.{sorted(unknown)[0]}")
    if update.get("type", "realtime") != "realtime":
        raise SessionError("This emulator serves realtime sessions only.", "invalid_value", "session.type")
    new = copy.deepcopy(session)
    for side in ("input", "output"):
        changes = (update.get("audio") or {}).get(side) or {}
        if "format" in changes:
            changes["format"] = _format(changes["format"], side)
        td = changes.get("turn_detection")
        if isinstance(td, dict):  # a null field takes its default, as a field left out does
            changes["turn_detection"] = {**_SERVER_VAD, **{k: v for k, v in td.items() if v is not None}}
        new["audio"][side].update(changes)
    for key, value in update.items():
        if key in ("audio", "type", "object", "id", "model", "expires_at"):  # the server's to set, not the client's
            continue
        if value is None and key in _KEPT_WHEN_NULL:
            continue
        new[key] = value
    new["tools"] = new.get("tools") or []
    session.clear()
    session.update(new)


def _check_types(update: dict) -> None:
    """Refuse a `session.update` whose fields have the wrong JSON types, before anything of it is stored: a value
    kept now is read later (by the VAD, by response.create), where a wrong type would fail that step instead."""
    s = "session."
    for key in ("input_audio_format", "output_audio_format", "voice"):  # beta names
        optional(update, key, s, "a string")
    for key in ("turn_detection", "input_audio_transcription", "input_audio_noise_reduction"):
        optional(update, key, s, "an object", "null")
    if optional(update, "modalities", s, "an array"):
        for i, value in enumerate(update["modalities"]):
            one_of(value, f"session.modalities[{i}]", ("text", "audio"))
    if "turn_detection" in update:
        _check_turn_detection(update["turn_detection"], "session.turn_detection.")
    audio = optional(update, "audio", s, "an object", "null") or {}
    for side in ("input", "output"):
        where = f"session.audio.{side}."
        changes = optional(audio, side, "session.audio.", "an object", "null") or {}
        optional(changes, "format", where, "an object", "a string")
        if side == "input":
            optional(changes, "transcription", where, "an object", "null")
            optional(changes, "noise_reduction", where, "an object", "null")
            _check_turn_detection(optional(changes, "turn_detection", where, "an object", "null"),
                                  where + "turn_detection.")
        else:
            optional(changes, "voice", where, "a string")
            optional(changes, "speed", where, "a number")
    check_response_fields(update, s)
    for key in ("tracing", "truncation"):
        optional(update, key, s, "a string", "an object", "null")
    for key in ("prompt", "reasoning"):
        optional(update, key, s, "an object", "null")
    optional(update, "include", s, "an array", "null")


def _check_turn_detection(td, where: str) -> None:
    if not isinstance(td, dict):
        return
    if "type" in td:
        one_of(td["type"], where + "type", ("server_vad", "semantic_vad"))
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if optional(td, key, where, "an integer", "null") is not None and td[key] < 0:
            raise SessionError(f"Invalid '{where}{key}': must be at least 0.", "invalid_value", where + key)
    if optional(td, "threshold", where, "a number", "null") is not None and not 0 <= td["threshold"] <= 1:
        raise SessionError(f"Invalid '{where}threshold': must be between 0 and 1.", "invalid_value",
                           where + "threshold")
    optional(td, "idle_timeout_ms", where, "an integer", "null")
    for key in ("create_response", "interrupt_response"):
        optional(td, key, where, "a boolean", "null")
    optional(td, "eagerness", where, "a string", "null")


def check_response_fields(fields: dict, where: str) -> None:
    """The fields a session and a response.create share, which a response reads: modalities, tools, tool choice,
    instructions, token limit."""
    if optional(fields, "output_modalities", where, "an array", "null") is not None:
        for i, value in enumerate(fields["output_modalities"]):
            one_of(value, f"{where}output_modalities[{i}]", ("text", "audio"))
    optional(fields, "instructions", where, "a string", "null")
    if isinstance(optional(fields, "tool_choice", where, "a string", "an object", "null"), str):
        one_of(fields["tool_choice"], where + "tool_choice", ("auto", "none", "required"))
    if fields.get("max_output_tokens") not in (None, "inf"):
        expect(fields["max_output_tokens"], where + "max_output_tokens", "an integer")
    for i, tool in enumerate(optional(fields, "tools", where, "an array", "null") or []):
        at = f"{where}tools[{i}]"
        expect(tool, at, "an object")
        if one_of(tool.get("type", "function"), at + ".type", ("function", "mcp")) == "function":
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise SessionError(f"Missing required parameter: '{at}.name'.", "missing_required_parameter",
                                   at + ".name")
            optional(tool, "description", at + ".", "a string")
            optional(tool, "parameters", at + ".", "an object")


def check_item(item: dict) -> None:
    """A conversation item's fields, by type (which the caller has checked), before it joins the conversation."""
    optional(item, "id", "item.", "a string")
    if item["type"] == "message":
        for i, part in enumerate(optional(item, "content", "item.", "an array") or []):
            expect(part, f"item.content[{i}]", "an object")
            for key in ("type", "text", "transcript"):
                optional(part, key, f"item.content[{i}].", "a string", "null")
        return
    optional(item, "call_id", "item.", "a string")
    for key in ("name", "arguments") if item["type"] == "function_call" else ("output",):
        optional(item, key, "item.", "a string")


def item_messages(session: dict, items: Iterable[dict]) -> list[dict]:
    """The conversation as chat-completions messages, which the rules read."""
    out = [{"role": "system", "content": session["instructions"]}] if session.get("instructions") else []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            # A system item in the conversation is input the model acts on (the session's instructions are not an
            # item); the rules read it as the latest thing said to the model.
            role = "user" if item.get("role") == "system" else item.get("role")
            out.append({"role": role, "content": message_text(item)})
        elif kind == "function_call":
            out.append({"role": "assistant", "content": None, "tool_calls": [{
                "id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": str(item.get("output") or "")})
    return out
