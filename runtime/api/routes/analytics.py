"""Reading calls: the full record (`GET /api/v1/calls/{id}`), its recording, Kupe's `call-analytics` list and
single-call lookup, and the ZIP export of a date range."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import tempfile
import zipfile
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, or_, select
from starlette.background import BackgroundTask
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from runtime.api.auth import Caller, Principal
from runtime.api.errors import COMMON_ERRORS, ApiError, ErrorResponse, bad_request, not_found
from runtime.api.lookup import owned
from config.text import NoNul
from runtime.api.schemas import Page, Pagination
from runtime.context import runtime_of
from runtime.records import call_record
from runtime.store.models import Call, TranscriptEntry

router = APIRouter(tags=["calls"], responses=COMMON_ERRORS)

EXPORT_MAX_CALLS = 10_000
EXPORT_MAX_DAYS = 366
SUMMARY_COLUMNS = ("id", "request_id", "direction", "status", "from_number", "to_number", "agent_id", "batch_id",
                   "created_at", "started_at", "ended_at", "duration_secs", "disconnection_reason", "ended_by",
                   "latency_e2e_p50_ms", "latency_e2e_p95_ms", "caller_audio_secs", "agent_audio_secs",
                   "llm_tokens_in", "llm_tokens_out", "tts_characters", "cost_usd", "analysis_status")


class TranscriptEntryOut(BaseModel):
    role: Literal["user", "assistant", "tool"]
    text: str
    start_secs: float = Field(description="From the start of the media stream")
    end_secs: float
    interrupted: bool
    latency: dict[str, int | None] | None = Field(
        default=None, description="Agent turns that answered the caller: e2e_ms (caller silent → first agent audio "
                                  "sent), stt_ms, llm_ms, tts_ms (each service's time to first byte)")
    tool: dict[str, Any] | None = Field(default=None, description="Role `tool`: name, call_id, arguments, result, "
                                                                  "error")


class CallRecordOut(BaseModel):
    id: str
    request_id: str | None
    status: str = Field(description="queued, initiated, ringing, in-progress, completed or failed")
    direction: str = Field(description="inbound, outbound or softphone")
    from_number: str | None
    to_number: str | None
    agent_id: str | None
    from_phone_number_id: str | None
    batch_id: str | None
    batch_item_id: str | None
    twilio_call_sid: str | None
    stream_sid: str | None
    carrier_status: str | None = Field(description="Twilio's latest status for the call")
    answered_by: str | None = Field(description="With answering machine detection: human, machine_start, …")
    created_at: str
    started_at: str | None
    ended_at: str | None
    duration_secs: int | None = Field(description="Twilio's CallDuration, once the call has ended")
    disconnection_reason: str | None = Field(description="One of runtime/reasons.py's enum (see the README)")
    error_detail: str | None
    ended_by: str | None = Field(description="caller, agent or system")
    variables: dict[str, Any]
    metadata: dict[str, Any]
    latency: dict[str, Any] | None = Field(description="Per measure (e2e, stt, llm, tts): p50, p90, p95, p99, max "
                                                       "in ms over the call's answered turns")
    usage: dict[str, Any] | None = Field(description="caller/agent audio seconds, STT seconds, LLM tokens in/out, "
                                                     "TTS characters")
    cost: dict[str, Any] | None = Field(description="Estimate in USD from config/prices.yaml, by component")
    recording_available: bool
    analysis_status: str | None = Field(description="Post-call analysis: pending, running, done or error")
    analysis: dict[str, Any] | None
    analysis_error: str | None
    transcript: list[TranscriptEntryOut] | None = None


async def _record(s, call: Call) -> dict[str, Any]:
    entries = list(await s.scalars(select(TranscriptEntry).where(TranscriptEntry.call_id == call.id)
                                   .order_by(TranscriptEntry.id)))
    return call_record(call, entries)


@router.get("/api/v1/calls/{call_id}", response_model=CallRecordOut, summary="A call's full record")
async def get_call(call_id: str, p: Caller, request: Request) -> dict:
    async with runtime_of(request).db() as s:
        call = await owned(s, Call, call_id, p, "call")
        return await _record(s, call)


class _RecordingResponse(FileResponse):
    """Starlette's FileResponse, with its two range answers brought in line with RFC 9110 and the API.

    Starlette answers a Range header it cannot parse with a plain-text 400, and one that lies past the end of the
    file with an empty plain-text 416. RFC 9110 §14.2 lets a server ignore an invalid Range (and requires it for a
    range unit it does not know): the whole recording is served, 200, as if no Range had been sent. An
    unsatisfiable range stays a 416 with `Content-Range: bytes */<size>` (§15.5.17), in the API's error body.
    Starlette only parses the Range when it would honour it (GET or HEAD, no stale If-Range), so this does too.
    """

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:
            return []  # Starlette serves the whole file for no ranges
        except RangeNotSatisfiable:
            # Raised before the response has started: FastAPI's exception handlers answer it (errors.py), with
            # the same headers for a HEAD, whose body the server drops.
            raise ApiError(416, "range_not_satisfiable",
                           f"Range: a range starts at or past the end of the recording ({file_size} bytes)",
                           [{"field": "Range", "message": f"each range must start before byte {file_size}"}],
                           headers={"Content-Range": f"bytes */{file_size}"}) from None


@router.get("/api/v1/calls/{call_id}/recording", summary="The call's stereo WAV (caller left, agent right)",
            description="Byte ranges (`Range: bytes=…`) are honoured, one (206) or several (206 "
                        "multipart/byteranges); a range that starts at or past the end answers 416 with "
                        "`Content-Range: bytes */<size>`, and a Range header that cannot be parsed is ignored "
                        "(the whole file, 200), as RFC 9110 allows. `HEAD` answers the same status and headers "
                        "without the body.",
            response_class=FileResponse,
            responses={200: {"content": {"audio/wav": {}}, "description": "The recording"},
                       206: {"content": {"audio/wav": {}, "multipart/byteranges": {}},
                             "description": "The requested range(s) of the recording"},
                       416: {"model": ErrorResponse, "description": "A requested range starts at or past the end"}})
# HEAD (download managers probe with it) is the same route: same key, workspace and 404 rules, FileResponse sends
# the headers alone. Left out of the OpenAPI document: its contract checks (schemathesis) expect each documented
# error's JSON body, which a HEAD answer never carries.
@router.head("/api/v1/calls/{call_id}/recording", include_in_schema=False)
async def get_recording(call_id: str, p: Caller, request: Request):
    rt = runtime_of(request)
    async with rt.db() as s:
        call = await owned(s, Call, call_id, p, "call")
    if not call.recording_path:
        raise not_found("recording")
    path = rt.settings.resolved_recordings_dir / os.path.basename(call.recording_path)
    if not path.is_file():
        raise not_found("recording")  # deleted by retention
    return _RecordingResponse(path, media_type="audio/wav", filename=f"{call.id}.wav")


def _filters(p: Principal, *, agent_id, status, direction, batch_id, start, end, text) -> list:
    where = [Call.workspace_id == p.workspace_id]
    if agent_id:
        where.append(Call.agent_id == agent_id)
    if status:
        where.append(Call.status == status)
    if direction:
        where.append(Call.direction == direction)
    if batch_id:
        where.append(Call.batch_id == batch_id)
    if start is not None:
        where.append(Call.created_at >= start)
    if end is not None:
        where.append(Call.created_at < end)
    if text := (text or "").replace("\x00", ""):
        # autoescape: `%` and `_` are searched for, not wildcards (as the agents' name_search)
        where.append(or_(*(column.contains(text, autoescape=True) for column in (
            Call.id, Call.request_id, Call.from_number, Call.to_number, Call.direction, Call.disconnection_reason))))
    return where


def _day(value: date | None, field: str, *, end: bool = False) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.combine(value + timedelta(days=1 if end else 0), time(), tzinfo=timezone.utc)
    except OverflowError:
        raise bad_request(f"{field}: out of range", [{"field": field, "message": "out of range"}]) from None


@router.get("/api/v1/call-analytics", response_model=Page[CallRecordOut],
            summary="Calls, newest first: one by request_id, or a filtered page (Kupe call-analytics)")
async def call_analytics(
    p: Caller, request: Request,
    request_id: str | None = Query(default=None, max_length=64, description="The call placed by this request"),
    page: int = Query(default=1, ge=1, le=100_000),
    page_size: int = Query(default=50, ge=1, le=200),
    agent_id: Annotated[str | None, Query(max_length=64), NoNul] = None,
    status: Annotated[str | None, Query(max_length=16), NoNul] = None,
    direction: Annotated[str | None, Query(max_length=16), NoNul] = None,
    batch_id: Annotated[str | None, Query(max_length=64), NoNul] = None,
    start_date: date | None = Query(default=None, description="YYYY-MM-DD, UTC, inclusive"),
    end_date: date | None = Query(default=None, description="YYYY-MM-DD, UTC, inclusive"),
    filter: str | None = Query(default=None, max_length=100,
                               description="Text search over ids, request ids, numbers, direction and end reason"),
) -> dict:
    if request_id is not None:
        async with runtime_of(request).db() as s:
            call = await s.scalar(select(Call).where(Call.workspace_id == p.workspace_id,
                                                     Call.request_id == request_id.replace("\x00", ""))
                                  .order_by(Call.created_at.desc()).limit(1))
            if call is None:
                raise not_found("call")
            return {"data": [await _record(s, call)],
                    "pagination": Pagination(page=1, limit=1, total=1, has_next=False)}
    where = _filters(p, agent_id=agent_id, status=status, direction=direction, batch_id=batch_id,
                     start=_day(start_date, "start_date"), end=_day(end_date, "end_date", end=True), text=filter)
    async with runtime_of(request).db() as s:
        total = await s.scalar(select(func.count()).select_from(Call).where(*where))
        calls = list(await s.scalars(select(Call).where(*where).order_by(Call.created_at.desc(), Call.id)
                                     .offset((page - 1) * page_size).limit(page_size)))
        data = [call_record(c) for c in calls]
    return {"data": data, "pagination": Pagination(page=page, limit=page_size, total=total,
                                                    has_next=page * page_size < total)}


def _summary_row(r: dict[str, Any]) -> list:
    e2e = (r.get("latency") or {}).get("e2e") or {}
    usage = r.get("usage") or {}
    extra = {"latency_e2e_p50_ms": e2e.get("p50"), "latency_e2e_p95_ms": e2e.get("p95"),
             "cost_usd": (r.get("cost") or {}).get("total"), **{k: usage.get(k) for k in SUMMARY_COLUMNS if k in usage}}
    return [extra.get(c, r.get(c)) for c in SUMMARY_COLUMNS]


def _write_zip(path: str, records: list[dict[str, Any]]) -> None:
    summary = io.StringIO()
    writer = csv.writer(summary)
    writer.writerow(SUMMARY_COLUMNS)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for r in records:
            z.writestr(f"calls/{r['id']}.json", json.dumps(r, indent=2, ensure_ascii=False))
            writer.writerow(_summary_row(r))
        z.writestr("summary.csv", summary.getvalue())


@router.get("/api/v1/call-analytics/export", summary="A ZIP of the calls of a date range (or one request_id): one "
            "JSON record per call with its transcript, and summary.csv", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}}, "description": "The export"}})
async def export_calls(
    p: Caller, request: Request,
    start_date: date | None = Query(default=None, description="YYYY-MM-DD, UTC, inclusive"),
    end_date: date | None = Query(default=None, description="YYYY-MM-DD, UTC, inclusive"),
    request_id: str | None = Query(default=None, max_length=64),
):
    if request_id is None and (start_date is None or end_date is None):
        raise bad_request("start_date and end_date are required (or request_id)",
                          [{"field": "start_date", "message": "required without request_id"}])
    if start_date and end_date and (end_date < start_date or (end_date - start_date).days > EXPORT_MAX_DAYS):
        raise bad_request(f"end_date must be on or after start_date and within {EXPORT_MAX_DAYS} days of it",
                          [{"field": "end_date", "message": "invalid range"}])
    where = _filters(p, agent_id=None, status=None, direction=None, batch_id=None,
                     start=_day(start_date, "start_date"), end=_day(end_date, "end_date", end=True), text=None)
    if request_id is not None:
        where.append(Call.request_id == request_id.replace("\x00", ""))
    async with runtime_of(request).db() as s:
        calls = list(await s.scalars(select(Call).where(*where).order_by(Call.created_at).limit(EXPORT_MAX_CALLS + 1)))
        if len(calls) > EXPORT_MAX_CALLS:
            raise bad_request(f"more than {EXPORT_MAX_CALLS} calls in the range: export a shorter one",
                              [{"field": "end_date", "message": "too many calls"}])
        records = [await _record(s, c) for c in calls]
    fd, path = tempfile.mkstemp(prefix="voxline-export-", suffix=".zip")
    os.close(fd)
    await asyncio.to_thread(_write_zip, path, records)  # compressing is CPU work: off the event loop
    name = f"calls-{request_id}" if request_id else f"calls-{start_date}-{end_date}"
    return FileResponse(path, media_type="application/zip", filename=f"{name}.zip",
                        background=BackgroundTask(os.unlink, path))
