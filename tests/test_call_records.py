"""The call record after a real call: timed transcript, latency percentiles, usage, cost, the recording served to
its workspace only, call analytics and the export; and calls left open by a crashed server closed at the next start."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import time
import wave
import zipfile
from datetime import datetime, timezone

import httpx
import pytest
import websockets

from tests.calls import converse, dial, media_payloads
from tests.conftest import RECORDED_NUMBER, create_key_with_cli, server_env, start_server

RECORDED_WELCOME = "Hello, this call is recorded."
RECORDED_REPLY = "We are at twelve Main Street."


@pytest.fixture(scope="module")
def keys(server):
    env = server_env(server.data_dir.parent)
    return {"default": create_key_with_cli(env, "default", "developer", "records"),
            "other": create_key_with_cli(env, "records-other", "admin", "records other")}


def _get(server, key: str, path: str, **params) -> httpx.Response:
    return httpx.get(server.url + path, headers={"x-api-key": key}, params=params, timeout=30)


@pytest.fixture(scope="module")
def recorded_call(server, speech):
    caller, spoke_at, replied_at = asyncio.run(converse(server, speech["located"], RECORDED_NUMBER))
    call_id = caller.answer.parameters["call_id"]
    server.wait_ended(call_id)
    return call_id, caller


def test_the_record_holds_the_transcript_latency_usage_and_cost(server, keys, recorded_call):
    call_id, caller = recorded_call
    r = _get(server, keys["default"], f"/api/v1/calls/{call_id}")
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["status"] == "completed" and rec["disconnection_reason"] == "caller_hangup"
    assert rec["direction"] == "inbound" and rec["to_number"] == RECORDED_NUMBER and rec["stream_sid"]
    started, ended = (datetime.fromisoformat(rec[k].replace("Z", "+00:00")) for k in ("started_at", "ended_at"))
    assert started < ended and started.tzinfo == timezone.utc

    roles = [(t["role"], t["text"]) for t in rec["transcript"]]
    assert roles[0] == ("assistant", RECORDED_WELCOME) and roles[-1] == ("assistant", RECORDED_REPLY), roles
    assert any(role == "user" and "located" in text.lower() for role, text in roles), roles
    offsets = [(t["start_secs"], t["end_secs"]) for t in rec["transcript"]]
    assert all(a <= b for a, b in offsets) and offsets == sorted(offsets)
    reply = rec["transcript"][-1]
    assert reply["latency"]["e2e_ms"] > 0

    # One answered turn: every percentile is that turn's latency.
    e2e = rec["latency"]["e2e"]
    assert e2e["turns"] == 1 and e2e["p50"] == e2e["p99"] == e2e["max"] == reply["latency"]["e2e_ms"]
    assert {"stt", "llm", "tts"} <= rec["latency"].keys()

    usage = rec["usage"]
    media_out = sum(len(p) for p in media_payloads(caller)) / 8000
    assert abs(usage["agent_audio_secs"] - media_out) < 0.05, (usage, media_out)
    assert usage["caller_audio_secs"] > 2.0 and usage["agent_audio_secs"] > 2.0
    # Whisper heard the caller's speech segment (not the silence around it).
    assert 0.5 < usage["stt_secs"] < usage["caller_audio_secs"]
    assert usage["tts_characters"] == len(RECORDED_WELCOME) + len(RECORDED_REPLY)

    # Local providers are free; only the carrier's minutes cost (config/prices.yaml).
    cost = rec["cost"]
    assert cost["currency"] == "USD" and cost["unpriced"] == []
    assert cost["components"]["stt"] == cost["components"]["llm"] == cost["components"]["tts"] == 0
    assert cost["total"] == cost["components"]["carrier"] > 0


def test_the_recording_is_served_to_its_workspace_only(server, keys, recorded_call):
    call_id, _ = recorded_call
    r = _get(server, keys["default"], f"/api/v1/calls/{call_id}/recording")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(r.content)) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 8000) and wav.getnframes() > 8000 * 3
    assert _get(server, keys["default"], f"/api/v1/calls/{call_id}").json()["recording_available"] is True
    for path in (f"/api/v1/calls/{call_id}/recording", f"/api/v1/calls/{call_id}"):
        other = _get(server, keys["other"], path)
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found", other.text
    assert _get(server, "vxl_wrong", f"/api/v1/calls/{call_id}/recording").status_code == 401


def test_call_analytics_filters_and_pages(server, keys, recorded_call):
    call_id, _ = recorded_call
    key = keys["default"]
    found = _get(server, key, "/api/v1/call-analytics", filter=RECORDED_NUMBER[-6:], page_size=200).json()
    assert call_id in [c["id"] for c in found["data"]]
    assert all(RECORDED_NUMBER[-6:] in (c["to_number"] or "") + (c["from_number"] or "") for c in found["data"])
    none = _get(server, key, "/api/v1/call-analytics", direction="outbound", filter=call_id).json()
    assert none["data"] == [] and none["pagination"]["total"] == 0
    first = _get(server, key, "/api/v1/call-analytics", page=1, page_size=1).json()
    assert len(first["data"]) == 1 and first["pagination"]["total"] >= 1
    assert first["pagination"]["has_next"] == (first["pagination"]["total"] > 1)
    today = datetime.now(timezone.utc).date().isoformat()
    ranged = _get(server, key, "/api/v1/call-analytics", start_date=today, end_date=today, status="completed",
                  page_size=200).json()
    assert call_id in [c["id"] for c in ranged["data"]]
    assert _get(server, key, "/api/v1/call-analytics", start_date="2000-01-01", end_date="2000-01-02").json()[
        "data"] == []
    assert _get(server, keys["other"], "/api/v1/call-analytics", filter=call_id).json()["data"] == []
    bad = _get(server, key, "/api/v1/call-analytics", start_date="yesterday")
    assert bad.status_code == 400 and "start_date" in bad.text
    missing = _get(server, key, "/api/v1/call-analytics", request_id="no-such-request")
    assert missing.status_code == 404


def test_the_export_is_a_zip_of_records_and_a_summary(server, keys, recorded_call):
    call_id, _ = recorded_call
    today = datetime.now(timezone.utc).date().isoformat()
    r = _get(server, keys["default"], "/api/v1/call-analytics/export", start_date=today, end_date=today)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(r.content))
    record = json.loads(z.read(f"calls/{call_id}.json"))
    assert record["id"] == call_id and record["transcript"][-1]["text"] == RECORDED_REPLY
    rows = list(csv.DictReader(io.StringIO(z.read("summary.csv").decode())))
    row = next(row for row in rows if row["id"] == call_id)
    assert row["disconnection_reason"] == "caller_hangup" and float(row["caller_audio_secs"]) > 2
    assert len(rows) == len([n for n in z.namelist() if n.startswith("calls/")])
    other = _get(server, keys["other"], "/api/v1/call-analytics/export", start_date=today, end_date=today)
    assert other.status_code == 200 and "calls/" not in " ".join(zipfile.ZipFile(io.BytesIO(other.content)).namelist())
    bad = _get(server, keys["default"], "/api/v1/call-analytics/export", start_date=today)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


async def _call_then_kill(srv) -> str:
    caller = await dial(srv)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        await caller.wait_agent_quiet(0.5, 20.0)  # the welcome has been said, and stored
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=10)
    return call_id


async def test_a_call_left_open_by_a_killed_server_is_closed_when_it_restarts(tmp_path):
    env = {"VOXLINE_INSTANCE_ID": "crash-test"}
    srv = start_server(tmp_path, auth_token=None, extra_env=env)
    try:
        call_id = await _call_then_kill(srv)
        assert srv.call_row(call_id)["ended_at"] is None  # nobody closed it: the process died
        srv = start_server(tmp_path, auth_token=None, extra_env=env)
        row = srv.wait_ended(call_id, timeout=10)
        assert row["status"] == "failed" and row["disconnection_reason"] == "error_internal", dict(row)
        assert "restarted" in row["error_detail"] and row["ended_by"] == "system"
        assert [t["role"] for t in srv.turns(call_id)][:1] == ["assistant"]  # the welcome survived
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()


async def test_a_call_whose_server_never_comes_back_is_closed_by_another(tmp_path):
    srv = start_server(tmp_path, auth_token=None, extra_env={"VOXLINE_INSTANCE_ID": "gone-for-good"})
    try:
        call_id = await _call_then_kill(srv)
        srv = start_server(tmp_path, auth_token=None, extra_env={
            "VOXLINE_INSTANCE_ID": "survivor", "VOXLINE_CALL_STALE_SECS": "1", "VOXLINE_CALL_HEARTBEAT_SECS": "0.3"})
        row = srv.wait_ended(call_id, timeout=10)
        assert row["disconnection_reason"] == "error_internal" and "no heartbeat" in row["error_detail"], dict(row)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()


def test_metrics_count_the_call_and_its_turn_latency(server, recorded_call):
    text = httpx.get(server.url + "/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['voxline_calls_ended_total{reason="caller_hangup",status="completed"}'] >= 1
    assert samples["voxline_turn_latency_seconds_count"] >= 1
    assert samples['voxline_service_ttfb_seconds_count{service="tts"}'] >= 1
    assert samples["voxline_active_calls"] == 0
    for family in ("voxline_barge_in_decision_seconds", "voxline_provider_errors_total",
                   "voxline_webhook_delivery_attempts_total"):
        assert f"# HELP {family.removesuffix('_total')}" in text, family


async def test_json_logs_name_the_call_on_every_line_of_it(tmp_path):
    srv = start_server(tmp_path, auth_token=None, extra_env={"VOXLINE_LOG_JSON": "true",
                                                             "VOXLINE_METRICS_TOKEN": "scrape-secret"})
    try:
        caller = await dial(srv)
        call_id = caller.answer.parameters["call_id"]
        async with caller:
            assert await caller.wait_agent_audio(0.0, 20.0)
        srv.wait_ended(call_id)
        assert httpx.get(srv.url + "/metrics", timeout=10).status_code == 401
        scraped = httpx.get(srv.url + "/metrics", headers={"authorization": "Bearer scrape-secret"}, timeout=10)
        assert scraped.status_code == 200 and "voxline_active_calls" in scraped.text
        # A softphone's event socket carries its per-call token in the query, which uvicorn logs.
        ws_url = srv.url.replace("http", "ws", 1) + f"/api/v1/softphone/calls/{call_id}/events?token=tok-SECRET-42"
        with pytest.raises(websockets.exceptions.WebSocketException):
            async with websockets.connect(ws_url) as ws:
                await asyncio.wait_for(ws.recv(), 10)
    finally:
        srv.proc.terminate()
        srv.proc.wait(timeout=15)
    lines = [line for line in srv.log().splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith("{")] == [], "every line is JSON, uvicorn's included"
    records = [json.loads(line)["record"] for line in lines]
    access = [r for r in records if r["name"] == "uvicorn.access"]
    assert any("GET /metrics" in r["message"] and r["message"].endswith("200") for r in access), access
    assert any(r["name"] == "uvicorn.error" and "Application startup complete" in r["message"] for r in records)
    assert "tok-SECRET-42" not in srv.log() and any("token=[redacted]" in r["message"] for r in records)
    of_call = [r for r in records if r["extra"].get("call_id") == call_id]
    assert any("media stream started" in r["message"] for r in of_call)
    assert any(r["name"].startswith("pipecat.") for r in of_call), "pipecat's own lines lack the call's context"
    assert all(r["extra"]["stream_sid"] == caller.stream_sid and r["extra"]["agent"] == "demo" for r in of_call)
    assert "scrape-secret" not in srv.log()


async def test_recordings_past_their_retention_are_deleted(tmp_path, speech):
    srv = start_server(tmp_path, auth_token=None)
    try:
        caller, _, _ = await converse(srv, speech["located"], RECORDED_NUMBER)
        call_id = caller.answer.parameters["call_id"]
        srv.wait_ended(call_id)
    finally:
        srv.proc.terminate()
        srv.proc.wait(timeout=15)
    recordings = srv.data_dir / "recordings"
    old, fresh = recordings / f"{call_id}.wav", recordings / "fresh.wav"
    fresh.write_bytes(old.read_bytes())
    three_days_ago = time.time() - 3 * 86400
    os.utime(old, (three_days_ago, three_days_ago))
    srv = start_server(tmp_path, auth_token=None, extra_env={"VOXLINE_RECORDING_RETENTION_DAYS": "2"})
    try:
        key = create_key_with_cli(server_env(tmp_path), "default", "developer", "retention")
        deadline = time.monotonic() + 10
        while old.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not old.exists() and fresh.exists()
        assert _get(srv, key, f"/api/v1/calls/{call_id}/recording").status_code == 404
        assert _get(srv, key, f"/api/v1/calls/{call_id}").json()["recording_available"] is False
    finally:
        srv.proc.terminate()
        srv.proc.wait(timeout=15)
