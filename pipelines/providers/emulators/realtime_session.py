"""The Realtime session object: its GA shape, `session.update` (beta field names included), and the conversation
as chat messages for the shared rules."""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Iterable

from pipelines.providers.emulators.rules import message_text

# GA format type → (codec, rate). G.711 is 8 kHz and goes through untouched; PCM is fixed at 24 kHz.
FORMATS = {"audio/pcm": ("pcm16", 24000), "audio/pcmu": ("mulaw", 8000), "audio/pcma": ("alaw", 8000)}
_BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
_SERVER_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
               "create_response": True, "interrupt_response": True, "idle_timeout_ms": None}
_KNOWN = {"type", "object", "id", "model", "output_modalities", "instructions", "audio", "tools", "tool_choice",
          "max_output_tokens", "tracing", "prompt", "expires_at", "include", "reasoning", "truncation"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(15)}"


class SessionError(Exception):
    def __init__(self, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


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
    for beta, side in (("input_audio_format", "input"), ("output_audio_format", "output")):
        if beta in update:
            name = update.pop(beta)
            audio.setdefault(side, {})["format"] = {"type": _BETA_FORMATS.get(name, name)}
    for beta, side, key in (("turn_detection", "input", "turn_detection"),
                            ("input_audio_transcription", "input", "transcription"),
                            ("input_audio_noise_reduction", "input", "noise_reduction"),
                            ("voice", "output", "voice")):
        if beta in update:
            audio.setdefault(side, {})[key] = update.pop(beta)
    if "modalities" in update:
        update["output_modalities"] = ["audio"] if "audio" in update.pop("modalities") else ["text"]
    for key in ("temperature", "max_response_output_tokens"):
        update.pop(key, None)
    return update


def _format(value, where: str) -> dict:
    fmt = value if isinstance(value, dict) else {"type": value}
    if fmt.get("type") not in FORMATS:
        raise SessionError(f"Invalid value: {fmt.get('type')!r}. Supported values are: 'audio/pcm', 'audio/pcmu', "
                           "and 'audio/pcma'.", "invalid_value", f"session.audio.{where}.format.type")
    if fmt["type"] == "audio/pcm" and fmt.get("rate", 24000) != 24000:
        raise SessionError("Only a rate of 24000 is supported for audio/pcm.", "invalid_value",
                           f"session.audio.{where}.format.rate")
    if fmt["type"] == "audio/pcm":
        return {"type": "audio/pcm", "rate": 24000}
    return {"type": fmt["type"]}


def update_session(session: dict, update) -> None:
    """Apply a `session.update` in place, or raise SessionError and leave the session as it was."""
    if not isinstance(update, dict):
        raise SessionError("Missing required parameter: 'session'.", "missing_required_parameter", "session")
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
        if isinstance(td, dict):
            changes["turn_detection"] = {**_SERVER_VAD, **td}
        new["audio"][side].update(changes)
    for key, value in update.items():
        if key not in ("audio", "type", "object", "id", "model"):
            new[key] = value
    new["tools"] = new.get("tools") or []
    session.clear()
    session.update(new)


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
