"""A full server turns new calls away (runtime/capacity.py): inbound rejected busy and recorded, outbound refused 503
before anything is dialed, campaigns wait; and the event loop's lateness as a limit of its own."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from config.settings import Settings
from runtime import capacity
from telephony.twilio.caller import Answer, MediaStreamCaller, post_incoming_call, sid
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, DEMO_NUMBER, start_api_server, start_server, stop_server
from runtime.store import repo
from tests.test_outbound_calls import (  # noqa: F401 - `carrier` and `database` are fixtures
    RING, _workspace, agent_config, carrier, carrier_env, database, dials, number, wait_record)
from tests.api_helpers import unique

BATCH = "/api/v1/batch-call"


@pytest.fixture(scope="module")
def full(tmp_path_factory, carrier):  # noqa: F811
    """A server that carries one call at a time, with an agent on a line of its own."""
    api = start_api_server(tmp_path_factory.mktemp("capacity"), "sqlite",
                           carrier_env(carrier, VOXLINE_MAX_CALLS="1", VOXLINE_BATCH_POLL_SECS="0.2"))
    with api.client() as c:
        agent = c.post("/api/v1/agents", json=agent_config(unique("cap"))).json()["id"]
        line = c.post("/api/v1/phone", json={"number": number("0")}).json()
        assert c.post("/api/v1/phone/mapping", json={"agent_id": agent, "phone_number_id": line["id"]}).status_code \
            == 200
    yield api, agent, line
    stop_server(api.server)


async def ring(api, to: str) -> tuple[str, Answer]:
    call_sid = sid("CA")
    answer = await post_incoming_call(api.url, to, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID,
                                      call_sid=call_sid, public_url=api.url)
    assert answer.status_code == 200, answer.twiml
    return call_sid, answer


def refused_row(api, call_sid: str):
    row = api.server.query("SELECT * FROM calls WHERE twilio_call_sid = ?", call_sid)[0]
    assert row["status"] == "failed" and row["disconnection_reason"] == "concurrency_limit_reached", dict(row)
    assert row["ended_at"] is not None and "limit of 1 calls" in row["error_detail"], dict(row)
    return row


def refused_total(api) -> float:
    text = httpx.get(api.url + "/metrics").text
    line = next((ln for ln in text.splitlines() if ln.startswith('voxline_calls_refused_total{limit="max_calls"}')),
                None)
    return float(line.split()[-1]) if line else 0.0


async def test_a_full_server_rejects_inbound_busy_refuses_outbound_and_takes_calls_again_when_free(full, carrier):  # noqa: F811
    api, agent, line = full
    first_sid, first = await ring(api, line["number"])
    assert first.stream_url and first.rejected is None

    # Admitted, its stream not open yet: it already counts.
    busy_sid, busy = await ring(api, line["number"])
    assert busy.rejected == "busy" and busy.stream_url is None and not busy.said, busy.twiml
    refused_row(api, busy_sid)

    caller = MediaStreamCaller(first, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID, call_sid=first_sid)
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0), "no welcome audio"
        # Live now: still full, for inbound and outbound alike.
        again_sid, again = await ring(api, line["number"])
        assert again.rejected == "busy", again.twiml
        refused_row(api, again_sid)
        to = number(RING)
        with api.client() as c:
            r = c.post("/api/v1/calls", json={"to": to, "agent_id": agent})
        assert r.status_code == 503 and r.headers["retry-after"] == str(capacity.RETRY_AFTER_SECS), r.text
        error = r.json()["error"]
        assert error["code"] == "at_capacity" and "limit of 1 calls" in error["message"], error
        assert dials(carrier, to) == [] and not api.server.query("SELECT id FROM calls WHERE to_number = ?", to)
        with api.client() as c:
            softphone = c.post("/api/v1/softphone/calls", json={"agent_id": agent})
            opened = api.server.query("SELECT count(*) AS n FROM calls WHERE direction = 'softphone'")[0]["n"]
        assert softphone.status_code == 503 and softphone.json()["error"]["code"] == "at_capacity", softphone.text
        assert opened == 0
        # Up, but full: /health stays 200 and says so; /ready turns a load balancer's next webhook elsewhere.
        health, ready = httpx.get(api.url + "/health"), httpx.get(api.url + "/ready")
        assert health.status_code == 200 and ready.status_code == 503, (health.text, ready.text)
        for body in (health.json(), ready.json()):
            assert body["accepting_calls"] is False and body["room"] == 0, body
            assert "limit of 1 calls" in body["refusal"], body
    api.server.wait_ended(first.parameters["call_id"], 10)
    ready = httpx.get(api.url + "/ready")
    assert ready.status_code == 200 and ready.json()["room"] == 1 and ready.json()["refusal"] is None, ready.text

    later_sid, later = await ring(api, line["number"])
    assert later.stream_url and later.rejected is None
    async with MediaStreamCaller(later, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID, call_sid=later_sid) as call:
        assert await call.wait_agent_audio(0.0, 20.0), "no welcome audio"
    api.server.wait_ended(later.parameters["call_id"], 10)
    assert refused_total(api) == 4
    log = api.server.log()
    assert (f"inbound +15550199999 → {line['number']} (CallSid {busy_sid}) refused: the server is at its limit of 1 "
            "calls") in log
    assert f"outbound call to {to} refused" in log


async def test_a_campaign_waits_while_the_server_is_full(full, carrier):  # noqa: F811
    api, agent, line = full
    first_sid, first = await ring(api, line["number"])
    caller = MediaStreamCaller(first, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID, call_sid=first_sid)
    to = number(RING)
    with api.client() as c:
        async with caller:
            assert await caller.wait_agent_audio(0.0, 20.0), "no welcome audio"
            r = c.post(f"{BATCH}/create", json={"agent_id": agent, "caller_phone_id": line["id"],
                                                "batch_name": unique("full"), "variable_names": [], "batch_size": 2})
            assert r.status_code == 201, r.text
            batch = r.json()["data"]["id"]
            assert c.post(f"{BATCH}/upload-json/{batch}", json={"records": [{"to_phonenumber": to}]}).status_code \
                == 200
            assert c.post(f"{BATCH}/start/{batch}").status_code == 200
            time.sleep(1.5)  # seven ticks of the campaign engine
            rows = c.get(f"{BATCH}/{batch}/data").json()["data"]
            assert [r["status"] for r in rows] == ["not_started"] and dials(carrier, to) == [], rows
        api.server.wait_ended(first.parameters["call_id"], 10)
        deadline = time.monotonic() + 10
        while not dials(carrier, to) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(dials(carrier, to)) == 1
        rows = c.get(f"{BATCH}/{batch}/data").json()["data"]
        assert rows[0]["status"] != "not_started" and rows[0]["call_id"], rows
        call = wait_record(c, rows[0]["call_id"], lambda r: r["status"] != "queued", 5)
        assert call["to_number"] == to


async def test_a_late_event_loop_refuses_new_calls_until_it_catches_up(monkeypatch):
    monkeypatch.setattr(capacity, "LAG_WINDOW_SECS", 0.5)
    loop = asyncio.get_running_loop()
    lag = capacity.LoopLag(loop)
    admission = capacity.Admission(Settings(shed_loop_lag_ms=20), {}, lag)
    lag.start()
    try:
        await asyncio.sleep(0.6)
        assert lag.mean_secs() < 0.02 and await admission.refusal() is None and await admission.room() is None

        busy_until = loop.time() + 0.8
        while loop.time() < busy_until:  # callbacks of 60 ms: the loop runs its timers late
            time.sleep(0.06)
            await asyncio.sleep(0)
        assert lag.mean_secs() >= 0.02
        why = await admission.refusal()
        assert why is not None and "event loop runs" in why and "VOXLINE_SHED_LOOP_LAG_MS=20" in why, why
        assert await admission.room() == 0

        await asyncio.sleep(0.7)  # a whole window of timers on time
        assert await admission.refusal() is None and lag.mean_secs() < 0.005
    finally:
        lag.stop()


async def test_no_limit_set_refuses_nothing():
    admission = capacity.Admission(Settings(), {f"c{i}": None for i in range(500)}, None)
    for i in range(50):
        admission.admitted(f"new{i}")
    assert await admission.refusal() is None and await admission.room() is None


async def test_max_calls_counts_live_streams_and_calls_let_in_until_their_stream_starts():
    sessions: dict = {"live": None}
    admission = capacity.Admission(Settings(max_calls=3), sessions, None)
    admission.admitted("a")
    assert await admission.calls_now() == 2 and await admission.room() == 1 and await admission.refusal() is None
    admission.admitted_secs = 0.3
    admission.admitted("b")
    assert await admission.room() == 0 and "limit of 3 calls" in await admission.refusal()
    sessions["a"] = None  # a's stream started on this process: counted once, as live
    admission.started("a")
    assert await admission.calls_now() == 3
    del sessions["live"]
    assert await admission.room() == 1
    # A call let in whose stream token has expired can no longer start: it stops counting.
    await asyncio.sleep(0.35)
    assert await admission.calls_now() == 1 and await admission.room() == 2


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_a_call_let_in_here_stops_counting_once_any_worker_streams_it_or_it_ends(database):  # noqa: F811
    ws_id, agent, _ = await _workspace(database)
    streamed, hung_up, ringing = [
        (await repo.create_call(database, workspace_id=ws_id, agent_id=agent.id, direction="inbound",
                                status="ringing")).id for _ in range(3)]
    admission = capacity.Admission(Settings(max_calls=3), {}, None, database)
    for call_id in (streamed, hung_up, ringing):
        admission.admitted(call_id)
    assert await admission.calls_now() == 3 and "limit of 3 calls" in await admission.refusal()
    # Another worker's session claims the stream (its gauge counts it there); the caller hangs up on another.
    assert await repo.claim_stream(database, streamed, "MZ" + "1" * 32, None)
    await repo.end_call(database, hung_up, status="failed", reason="error_carrier", detail="never streamed")
    assert await admission.calls_now() == 1 and await admission.room() == 2
    # Webhooks deciding at once on this process (each waits on the database midway): two slots, two calls let in.
    answers = await asyncio.gather(*(admission.admit(f"webhook {i}") for i in range(6)))
    assert answers.count(None) == 2 and await admission.calls_now() == 3, answers
    call = await repo.create_call(database, workspace_id=ws_id, agent_id=agent.id, direction="inbound",
                                  status="ringing")
    admission.admitted(call.id)  # a let-in call's row: its slot becomes the call, not a second one
    assert await admission.calls_now() == 3


async def test_two_workers_count_the_calls_each_other_let_in(tmp_path, twilio_api):
    from tests.test_workers import metric, names

    srv = start_server(tmp_path, auth_token=AUTH_TOKEN, args=("--workers", "2"),
                       extra_env={"TWILIO_API_BASE_URL": twilio_api.url, "VOXLINE_MAX_CALLS": "2"})
    try:
        assert len(names(srv)) == 2

        async def call() -> tuple[str, Answer]:
            # A fresh connection each: the parent hands it to the worker holding fewer, ties in turn, so the two
            # calls let in are let in by different workers, each unaware of the other's but for the shared gauge.
            return await ring(srv, DEMO_NUMBER)

        (first_sid, first), (_, second) = await call(), await call()
        assert first.stream_url and second.stream_url
        busy_sid, busy = await call()
        assert busy.rejected == "busy", busy.twiml
        assert metric(srv, "voxline_calls_starting") == 2 and metric(srv, "voxline_active_calls") == 0
        async with MediaStreamCaller(first, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID, call_sid=first_sid) as c:
            assert await c.wait_agent_audio(0.0, 20.0), "no welcome audio"
            await asyncio.sleep(capacity.SWEEP_SECS + 0.5)  # the worker that let it in sees it streaming elsewhere
            assert metric(srv, "voxline_calls_starting") == 1 and metric(srv, "voxline_active_calls") == 1
            assert (await call())[1].rejected == "busy"
        srv.wait_ended(first.parameters["call_id"], 10)
        assert (await call())[1].stream_url
    finally:
        stop_server(srv)


async def test_a_server_just_started_takes_its_first_call_under_a_lag_limit(tmp_path, twilio_api):
    # Start-up blocks the loop (imports, models, a full collection): counted, it refused the first calls.
    srv = start_server(tmp_path, auth_token=AUTH_TOKEN,
                       extra_env={"TWILIO_API_BASE_URL": twilio_api.url, "VOXLINE_SHED_LOOP_LAG_MS": "20"})
    try:
        _, answer = await ring(srv, DEMO_NUMBER)
        assert answer.stream_url and answer.rejected is None, (answer.twiml, srv.log()[-2000:])
    finally:
        stop_server(srv)

