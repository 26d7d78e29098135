"""A call as the outside world sees it: one JSON shape for the API, the analytics export and webhook payloads."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from runtime.store.models import Call, TranscriptEntry


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; everything is stored in UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def transcript_entry(e: TranscriptEntry) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": e.role, "text": e.text, "start_secs": round(e.start_secs, 3),
                             "end_secs": round(e.end_secs, 3), "interrupted": bool(e.interrupted)}
    if e.role == "assistant" and e.latency_ms is not None:
        entry["latency"] = {"e2e_ms": e.latency_ms, "stt_ms": e.stt_ms, "llm_ms": e.llm_ms, "tts_ms": e.tts_ms}
    if e.role == "tool":
        entry["tool"] = {"name": e.tool_name, "call_id": e.tool_call_id, "arguments": e.tool_arguments,
                         "result": e.tool_result, "error": e.tool_error}
    return entry


def call_record(call: Call, entries: list[TranscriptEntry] | None = None) -> dict[str, Any]:
    """The call row, with its transcript when `entries` is given."""
    record: dict[str, Any] = {
        "id": call.id,
        "request_id": call.request_id,
        "status": call.status,
        "direction": call.direction,
        "from_number": call.from_number,
        "to_number": call.to_number,
        "agent_id": call.agent_id,
        "from_phone_number_id": call.from_phone_number_id,
        "batch_id": call.batch_id,
        "batch_item_id": call.batch_item_id,
        "twilio_call_sid": call.twilio_call_sid,
        "stream_sid": call.stream_sid,
        "carrier_status": call.carrier_status,
        "answered_by": call.answered_by,
        "created_at": iso(call.created_at),
        "started_at": iso(call.started_at),
        "ended_at": iso(call.ended_at),
        "duration_secs": call.duration_secs,
        "disconnection_reason": call.disconnection_reason,
        "error_detail": call.error_detail,
        "ended_by": call.ended_by,
        "variables": call.variables or {},
        "metadata": call.call_metadata or {},
        "latency": call.latency,
        "usage": call.usage,
        "cost": call.cost,
        "recording_available": bool(call.recording_path),
        "analysis_status": call.analysis_status,
        "analysis": call.analysis,
        "analysis_error": call.analysis_error,
    }
    if entries is not None:
        record["transcript"] = [transcript_entry(e) for e in entries]
    return record
