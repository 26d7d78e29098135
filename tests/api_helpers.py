"""Helpers shared by the API tests."""

from __future__ import annotations

import json
import uuid

import httpx


def unique(prefix: str = "t") -> str:
    """A name no other test of the session uses (the API servers are shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_agent(c: httpx.Client, config: dict) -> dict:
    r = c.post("/api/v1/agents", json=config)
    assert r.status_code == 201, r.text
    return r.json()


def refused(r: httpx.Response, field: str, code: str = "validation_error") -> str:
    """The message of a 400 with this code that names `field` (in the message and in details)."""
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["status"] == 400, error
    assert f"{field}:" in error["message"], error
    assert field in [d["field"] for d in error["details"]], error
    return error["message"]


def chat_turn(c: httpx.Client, session_id: str, message: str) -> list[tuple[str, dict]]:
    """POST /api/v1/chat/turn and read its Server-Sent Events: [(event, data)] in order."""
    events, name = [], None
    with c.stream("POST", "/api/v1/chat/turn", json={"session_id": session_id, "message": message}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
    return events
