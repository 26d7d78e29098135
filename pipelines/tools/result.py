"""What a tool call gives back to the LLM: a value, or a structured error the conversation can go on from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class ToolResult:
    ok: bool
    value: Any = None
    error: str | None = None
    code: str | None = None  # invalid_arguments, refused_address, timeout, connection_error, http_error, failed
    status: int | None = None  # the HTTP status, for HTTP tools
    truncated: bool = False

    @classmethod
    def success(cls, value: Any, *, status: int | None = None, truncated: bool = False) -> ToolResult:
        return cls(True, value=value, status=status, truncated=truncated)

    @classmethod
    def failure(cls, code: str, message: str, *, status: int | None = None, value: Any = None) -> ToolResult:
        return cls(False, value=value, error=message, code=code, status=status)

    def for_llm(self) -> dict[str, Any]:
        """The payload the LLM reads (and the store keeps): {"result": ...} or {"error": {"code", "message"}}."""
        out: dict[str, Any] = {}
        if self.status is not None:
            out["status"] = self.status
        if self.ok:
            out["result"] = self.value
            if self.truncated:
                out["truncated"] = True
        else:
            out["error"] = {"code": self.code, "message": self.error}
            if self.value is not None:
                out["body"] = self.value
        return out


def payload_text(payload: Any) -> tuple[str, bool]:
    """(text, is_error) of a tool payload as the LLM saw it: the result as text, or the error message."""
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return payload, False
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message") or "tool error"), True
    if isinstance(payload, dict) and "result" in payload:
        payload = payload["result"]
    if isinstance(payload, str):
        return payload, False
    return json.dumps(payload, ensure_ascii=False, separators=(", ", ": ")), False
