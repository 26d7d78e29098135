"""Outbound calls (issue 5): placing them through both routes against the Twilio emulator, what is refused before
dialing, carrier refusals, status callbacks (signed here, or posted by the emulated carrier itself), prompt
variables, and one whole call the emulated carrier answers and talks through.

Numbers dialed are +1555, a digit saying what the emulated callee does (RULES), then six random digits."""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import httpx
import pytest
import yaml
from twilio.request_validator import RequestValidator

from config.agent import AgentConfig
from config.settings import Settings
from config.variables import missing, placeholders, render
from runtime.context import Runtime
from runtime.store import db as store_db
from runtime.store import repo
from runtime.store.models import Agent, PhoneNumber
from runtime.tokens import StreamTokens
from telephony.twilio.caller import Answer, MediaStreamCaller
from tests.api_helpers import unique
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, free_port, start_api_server, stop_server

RING, ANSWER, BUSY, MACHINE = "6", "7", "8", "9"
RULES = """
default: {outcome: no-answer, ring_secs: 600}   # rings until the call's Timeout: these tests send the callbacks
rules:
  - match: "+15557*"
    outcome: answer
    ring_secs: 0.3
    # One phrase: "Hello, what are…" (the default callee's) pauses after "Hello", which makes two turns.
    callee: [{wait_agent: true}, {say: "What are your opening hours?"}, {wait_agent: true}, {hangup: true}]
  - {match: "+15558*", outcome: busy, ring_secs: 0.2}
  - {match: "+15559*", outcome: machine, ring_secs: 0.2}
"""
HOURS = "We are open every day from noon until ten in the evening."
EVENTS = ["initiated", "ringing", "answered", "completed"]


def number(kind: str = RING) -> str:
    return f"+1555{kind}{secrets.randbelow(10**6):06d}"


def agent_config(name: str, **overrides) -> dict:
    return {"name": name, "system_prompt": "You call people for Luigi's.", "welcome_message": "Hello, this is Luigi's.",
            "transcriber": {"provider": "whisper"}, "tts": {"provider": "piper"},
            "llm": {"provider": "scripted", "script": {"rules": [{"keywords": ["hours", "open", "opening"],
                                                                 "reply": HOURS}]}},
            "call": {"silence_timeout_secs": 0}, **overrides}


# --- fixtures -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def carrier() -> str:
    """The Twilio emulator in process, as the carrier: rings, answers by RULES, streams, posts signed callbacks."""
    import uvicorn

    from telephony.twilio.emulator import RuleSet, create_emulator_app

    app = create_emulator_app(ACCOUNT_SID, AUTH_TOKEN, RuleSet.parse(yaml.safe_load(RULES)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(5)


def carrier_env(carrier: str, **extra) -> dict:
    return {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_API_BASE_URL": carrier,
            "VOXLINE_RATE_LIMIT_PER_MINUTE": "100000", **extra}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request, tmp_path_factory, carrier):
    pg = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    api = start_api_server(tmp_path_factory.mktemp(f"outbound-{request.param}"), request.param, carrier_env(carrier),
                           pg)
    yield api
    stop_server(api.server)


@dataclass
class Setup:
    plain: str  # agent ids
    with_vars: str
    amd: str
    text: str
    line: dict  # mapped to `plain`
    spare: dict  # unmapped
    first_line: str  # the workspace's first number
    other_agent: str
    other_line: str


@pytest.fixture(scope="module")
def ws(srv) -> Setup:
    def create_agent(c, config):
        r = c.post("/api/v1/agents", json=config)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def create_line(c, agent_id=None):
        r = c.post("/api/v1/phone", json={"number": number("0")})
        assert r.status_code == 201, r.text
        if agent_id:
            assert c.post("/api/v1/phone/mapping", json={"agent_id": agent_id,
                                                         "phone_number_id": r.json()["id"]}).status_code == 200
        return r.json()

    with srv.client() as c:
        plain = create_agent(c, agent_config(unique("plain")))
        with_vars = create_agent(c, agent_config(
            unique("vars"), system_prompt="You remind {{name}} of their table on {{ day }}.",
            welcome_message="Hello {{name}}, this is Luigi's."))
        amd = create_agent(c, agent_config(unique("amd"), call={"answering_machine_detection": True}))
        text = create_agent(c, {"name": unique("text"), "architecture": "text", "system_prompt": "Chat.",
                                "llm": {"provider": "scripted"}})
        spare = create_line(c)
        line = create_line(c, plain)
        first_line = c.get("/api/v1/phone").json()["data"][0]["number"]
    with srv.client("other") as c:
        other_agent = create_agent(c, agent_config(unique("theirs")))
        other_line = create_line(c, other_agent)["id"]
    return Setup(plain, with_vars, amd, text, line, spare, first_line, other_agent, other_line)


# --- helpers --------------------------------------------------------------------------------------------------------

def dials(carrier: str, to: str) -> list[dict]:
    """The carrier's call-create requests for this destination."""
    log = httpx.get(f"{carrier}/_emulator/requests").json()["requests"]
    return [r["form"] for r in log if r["method"] == "POST" and r["path"].endswith("/Calls.json")
            and r["form"].get("To") == to]


def carrier_view(carrier: str, sid: str, *, delivered: set[str] = frozenset(), wait: float = 0.0,
                 timeout: float = 10.0) -> dict:
    """The emulated call, once the callbacks for `delivered` events have been answered by our server."""
    deadline = time.monotonic() + wait + timeout
    while True:
        view = httpx.get(f"{carrier}/_emulator/calls/{sid}", params={"wait": wait}, timeout=wait + 10).json()
        done = {c["event"] for c in view.get("callbacks", []) if c["http_status"] is not None}
        if delivered <= done or time.monotonic() > deadline:
            return view
        time.sleep(0.05)


def place(c: httpx.Client, **body) -> dict:
    r = c.post("/api/v1/calls", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def ringing_call(c: httpx.Client, carrier: str, agent_id: str, **body) -> tuple[str, str]:
    """A call placed and ringing at the carrier, whose own first callbacks have been handled: (call id, CallSid)."""
    placed = place(c, to=number(RING), agent_id=agent_id, **body)
    assert placed["status"] == "success", placed
    carrier_view(carrier, placed["telephony_leg_id"], delivered={"initiated", "ringing"})
    return placed["call_session_id"], placed["telephony_leg_id"]


def status_callback(url: str, call_id: str | None, sid: str, status: str, *, token: str = AUTH_TOKEN,
                    **extra) -> httpx.Response:
    """A status callback signed as Twilio signs it."""
    target = f"{url}/telephony/twilio/status" + (f"?call_id={call_id}" if call_id else "")
    params = {"AccountSid": ACCOUNT_SID, "ApiVersion": "2010-04-01", "CallSid": sid, "CallStatus": status,
              "Direction": "outbound-api", **{k: str(v) for k, v in extra.items()}}
    signature = RequestValidator(token).compute_signature(target, params)
    return httpx.post(target, data=params, headers={"X-Twilio-Signature": signature})


def record(c: httpx.Client, call_id: str) -> dict:
    r = c.get(f"/api/v1/calls/{call_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_record(c: httpx.Client, call_id: str, done, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while not done(found := record(c, call_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def ended(r: dict) -> bool:
    """The carrier's status callback can bring the duration before the session has written how the call ended."""
    return r["duration_secs"] is not None and r["disconnection_reason"] is not None


def refused(r: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["status"] == status, error
    if field:
        assert field in [d["field"] for d in error["details"]] and f"{field}" in error["message"], error
    return error


# --- placing --------------------------------------------------------------------------------------------------------

def test_create_call_dials_twilio_with_our_stream_and_status_callbacks(srv, ws, carrier):
    to = number()
    with srv.client() as c:
        r = c.post("/api/call/create_call", params={"phoneNumber": to, "agent_id": ws.plain,
                                                    "phone_number_id": ws.line["id"]})
        assert r.status_code == 200, r.text
        placed = r.json()
        assert set(placed) == {"status", "request_id", "call_session_id", "telephony_provider", "target_number",
                               "from_phone_number", "telephony_leg_id", "reason"}
        assert placed["status"] == "success" and placed["reason"] is None, placed
        assert placed["telephony_provider"] == "twilio" and placed["target_number"] == to
        assert placed["from_phone_number"] == ws.line["number"] and placed["telephony_leg_id"].startswith("CA")
        call_id = placed["call_session_id"]

        [form] = dials(carrier, to)
        assert form["From"] == ws.line["number"]
        assert form["StatusCallback"] == f"{srv.url}/telephony/twilio/status?call_id={call_id}"
        assert form["StatusCallbackEvent"] == EVENTS and form["StatusCallbackMethod"] == "POST"
        assert form["Timeout"] == "55" and "MachineDetection" not in form  # the 60 s stream token, less a margin
        twiml = ET.fromstring(form["Twiml"])
        stream = twiml.find("Connect/Stream")
        assert stream.get("url") == srv.server.stream_url and twiml[-1].tag == "Hangup"
        params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        assert params["call_id"] == call_id
        secret = (srv.server.data_dir / "secret_key").read_text().strip()
        StreamTokens(secret, 60).verify(params["token"], call_id)  # a valid token for this very call

        call = record(c, call_id)
        assert call["direction"] == "outbound" and call["status"] in ("queued", "initiated", "ringing"), call
        assert (call["from_number"], call["to_number"], call["agent_id"]) == (ws.line["number"], to, ws.plain)
        assert call["twilio_call_sid"] == placed["telephony_leg_id"] and call["request_id"] == placed["request_id"]
        assert call["from_phone_number_id"] == ws.line["id"] and call["ended_at"] is None
        assert call["variables"] == {} and call["metadata"] == {}


def test_v1_calls_take_variables_and_metadata_and_default_the_line(srv, ws, carrier):
    to = number()
    with srv.client() as c:
        placed = place(c, to=to, agent_id=ws.with_vars, variables={"name": "Ada", "day": "Friday", "seats": 2},
                       metadata={"crm_id": 42, "tags": ["vip"], "note": "é"})
        assert placed["status"] == "success", placed
        # No line given, none mapped to this agent: the workspace's first line.
        assert placed["from_phone_number"] == ws.first_line == dials(carrier, to)[0]["From"]
        call = record(c, placed["call_session_id"])
        assert call["variables"] == {"name": "Ada", "day": "Friday", "seats": "2"}
        assert call["metadata"] == {"crm_id": 42, "tags": ["vip"], "note": "é"}
        # The line mapped to the agent comes first.
        assert place(c, to=number(), agent_id=ws.plain)["from_phone_number"] == ws.line["number"]
        # National notation is dialed as E.164.
        national = number()
        assert place(c, to=f"+1 ({national[2:5]}) {national[5:8]}-{national[8:]}",
                     agent_id=ws.plain)["target_number"] == national


def test_what_is_refused_before_dialing(srv, ws, carrier):
    to = number()
    with srv.client() as c:
        kupe = lambda **q: c.post("/api/call/create_call", params={"phoneNumber": to, "agent_id": ws.plain, **q})
        v1 = lambda **b: c.post("/api/v1/calls", json={"to": to, "agent_id": ws.plain, **b})
        refused(kupe(phoneNumber="12345"), 400, "invalid_request", "phoneNumber")
        refused(v1(to="not a number"), 400, "invalid_request", "to")
        refused(c.post("/api/call/create_call", params={"phoneNumber": to}), 400, "validation_error", "agent_id")
        refused(kupe(agent_id="0" * 32), 404, "not_found")
        refused(v1(agent_id="nonsense"), 404, "not_found")
        refused(kupe(agent_id=ws.other_agent), 404, "not_found")  # another workspace's: not found, not forbidden
        refused(kupe(phone_number_id=ws.other_line), 404, "not_found")
        refused(v1(from_phone_number_id=ws.other_line), 404, "not_found")
        refused(kupe(agent_id=ws.text), 400, "invalid_request", "agent_id")
        error = refused(v1(agent_id=ws.with_vars, variables={"name": "Ada"}), 400, "missing_variables")
        assert "{{day}}" in error["message"] and [d["field"] for d in error["details"]] == ["variables.day"], error
        error = refused(kupe(agent_id=ws.with_vars), 400, "missing_variables")
        assert [d["field"] for d in error["details"]] == ["variables.day", "variables.name"], error
        blank = refused(v1(agent_id=ws.with_vars, variables={"name": " ", "day": "Friday"}), 400, "missing_variables")
        assert [d["field"] for d in blank["details"]] == ["variables.name"], blank
        refused(v1(variables={"name": True}), 400, "validation_error")
        refused(v1(variables={"two words": "x"}), 400, "validation_error")
        refused(v1(metadata={"x": "nul\x00"}), 400, "validation_error")
        refused(v1(unknown=1), 400, "validation_error")
    assert dials(carrier, to) == [], "a refused request reached the carrier"


def test_an_idempotency_key_places_one_call(srv, ws, carrier):
    to, key = number(), f"call-{secrets.token_hex(8)}"
    with srv.client() as c:
        first = c.post("/api/v1/calls", json={"to": to, "agent_id": ws.plain}, headers={"Idempotency-Key": key})
        again = c.post("/api/v1/calls", json={"to": to, "agent_id": ws.plain}, headers={"Idempotency-Key": key})
        kupe_key = key + "-kupe"
        query = {"phoneNumber": to, "agent_id": ws.plain}
        third = c.post("/api/call/create_call", params=query, headers={"Idempotency-Key": kupe_key})
        fourth = c.post("/api/call/create_call", params=query, headers={"Idempotency-Key": kupe_key})
    assert first.status_code == again.status_code == third.status_code == fourth.status_code == 200
    assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"
    assert fourth.json() == third.json() and fourth.headers.get("idempotent-replayed") == "true"
    assert third.json()["call_session_id"] != first.json()["call_session_id"]
    assert len(dials(carrier, to)) == 2, "a retry with the same Idempotency-Key dialed again"


def test_a_carrier_refusal_answers_failed_with_the_ids_and_closes_the_call(tmp_path, carrier):
    # Credentials the carrier does not accept: Twilio answers 401 (20003) to the create request.
    api = start_api_server(tmp_path, "sqlite", carrier_env(carrier, TWILIO_AUTH_TOKEN="not-the-token"))
    to = number()
    try:
        with api.client() as c:
            agent = c.post("/api/v1/agents", json=agent_config(unique("refused"))).json()["id"]
            r = c.post("/api/call/create_call", params={"phoneNumber": to, "agent_id": agent})
            assert r.status_code == 200, r.text
            placed = r.json()
            assert placed["status"] == "failed" and placed["telephony_leg_id"] is None, placed
            assert "401" in placed["reason"] and "20003" in placed["reason"], placed
            assert placed["call_session_id"] and placed["request_id"] and placed["target_number"] == to
            call = record(c, placed["call_session_id"])
        assert call["status"] == "failed" and call["disconnection_reason"] == "dial_failed", call
        assert call["ended_by"] == "system" and call["ended_at"] and "401" in call["error_detail"], call
    finally:
        stop_server(api.server)


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
def test_a_server_without_twilio_credentials_says_so(api):
    with api.client() as c:
        agent = c.post("/api/v1/agents", json=agent_config(unique("nocreds"))).json()["id"]
        r = c.post("/api/v1/calls", json={"to": number(), "agent_id": agent})
    assert "TWILIO_ACCOUNT_SID" in refused(r, 503, "twilio_not_configured")["message"]


# --- status callbacks -----------------------------------------------------------------------------------------------

def test_callbacks_move_a_call_forward_only(srv, ws, carrier):
    with srv.client() as c:
        call_id, sid = ringing_call(c, carrier, ws.plain)
        assert record(c, call_id)["status"] == "ringing" and record(c, call_id)["carrier_status"] == "ringing"

        assert status_callback(srv.url, call_id, sid, "in-progress").status_code == 204
        answered = record(c, call_id)
        assert answered["status"] == answered["carrier_status"] == "in-progress" and answered["started_at"], answered
        for late in ("ringing", "initiated", "queued", "in-progress"):  # out of order, or repeated
            assert status_callback(srv.url, call_id, sid, late).status_code == 204
        assert record(c, call_id) == answered, "a late or repeated callback moved the call"

        # Answered, but no media stream ever came: the carrier's final word closes the call.
        assert status_callback(srv.url, call_id, sid, "completed", CallDuration=7).status_code == 204
        done = record(c, call_id)
        assert done["carrier_status"] == "completed" and done["duration_secs"] == 7 and done["ended_at"], done
        assert (done["status"], done["disconnection_reason"], done["ended_by"]) == ("failed", "error_carrier",
                                                                                    "system"), done
        for late in ("in-progress", "ringing", "busy", "no-answer"):
            status_callback(srv.url, call_id, sid, late, CallDuration=99)
        assert record(c, call_id) == done, "a callback after the final one changed the call"

        # The duration a final callback lacked is filled by a repeated one, and only once.
        call_id, sid = ringing_call(c, carrier, ws.plain)
        status_callback(srv.url, call_id, sid, "no-answer")
        assert record(c, call_id)["duration_secs"] is None
        status_callback(srv.url, call_id, sid, "no-answer", CallDuration=0)
        status_callback(srv.url, call_id, sid, "completed", CallDuration=5)
        filled = record(c, call_id)
        assert (filled["duration_secs"], filled["carrier_status"], filled["disconnection_reason"]) == \
               (0, "no-answer", "dial_no_answer"), filled


@pytest.mark.parametrize("status, reason, ours", [
    ("busy", "dial_busy", "completed"), ("no-answer", "dial_no_answer", "completed"),
    ("failed", "dial_failed", "failed"), ("canceled", "dial_failed", "failed")])
def test_a_call_that_never_connected_is_closed_with_the_carriers_reason(srv, ws, carrier, status, reason, ours):
    with srv.client() as c:
        call_id, sid = ringing_call(c, carrier, ws.plain)
        # Without the call id in the URL (a callback configured elsewhere), the CallSid finds the call.
        assert status_callback(srv.url, None, sid, status, CallDuration=0).status_code == 204
        call = record(c, call_id)
    assert (call["status"], call["disconnection_reason"], call["carrier_status"]) == (ours, reason, status), call
    assert call["ended_by"] == "system" and call["duration_secs"] == 0 and call["ended_at"], call


def test_callbacks_with_a_bad_signature_or_another_calls_sid_change_nothing(srv, ws, carrier):
    with srv.client() as c:
        call_id, sid = ringing_call(c, carrier, ws.plain)
        before = record(c, call_id)
        assert status_callback(srv.url, call_id, sid, "busy", token="wrong-token").status_code == 403
        unsigned = httpx.post(f"{srv.url}/telephony/twilio/status?call_id={call_id}",
                              data={"CallSid": sid, "CallStatus": "busy"})
        assert unsigned.status_code == 403
        # Signed, but the call id in the URL belongs to another CallSid: ignored.
        assert status_callback(srv.url, call_id, "CA" + "f" * 32, "busy").status_code == 204
        assert status_callback(srv.url, None, "CA" + "e" * 32, "busy").status_code == 204  # unknown call
        assert record(c, call_id) == before
    assert "invalid or missing X-Twilio-Signature" in srv.server.log()


async def test_a_call_that_streamed_keeps_its_sessions_reason_and_gains_the_duration(srv, ws, carrier):
    """The media stream is opened here, from the TwiML the carrier was given (as Twilio would on answer)."""
    to = number()
    with srv.client() as c:
        placed = place(c, to=to, agent_id=ws.with_vars, variables={"name": "Ada", "day": "Friday"})
        call_id, sid = placed["call_session_id"], placed["telephony_leg_id"]
        carrier_view(carrier, sid, delivered={"initiated", "ringing"})
        status_callback(srv.url, call_id, sid, "in-progress")
        stream = ET.fromstring(dials(carrier, to)[0]["Twiml"]).find("Connect/Stream")
        answer = Answer(200, "", stream.get("url"), {p.get("name"): p.get("value") for p in stream})
        async with MediaStreamCaller(answer, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID, call_sid=sid) as callee:
            assert await callee.wait_agent_audio(0.0, 20.0), "no welcome"
            assert await callee.wait_agent_quiet(0.8, 30.0)
            # A final callback racing the stream's own end must not close the call in the session's place.
            await asyncio.to_thread(status_callback, srv.url, call_id, sid, "completed", CallDuration=4)
        call = wait_record(c, call_id, lambda r: r["disconnection_reason"] == "caller_hangup")
    assert call["disconnection_reason"] == "caller_hangup" and call["ended_by"] == "caller", call
    assert call["duration_secs"] == 4 and call["carrier_status"] == "completed" and call["status"] == "completed"
    turns = srv.server.turns(call_id) if srv.backend == "sqlite" else None
    if turns is not None:  # the variables reached the agent's welcome
        assert turns[0]["role"] == "assistant" and "Ada" in turns[0]["text"], [dict(t) for t in turns]


# --- the emulated carrier's own callbacks -------------------------------------------------------------------------

def test_the_carriers_busy_and_voicemail_close_the_call(srv, ws, carrier):
    with srv.client() as c:
        busy = place(c, to=number(BUSY), agent_id=ws.plain)
        machine_to = number(MACHINE)
        machine = place(c, to=machine_to, agent_id=ws.amd)
        assert dials(carrier, machine_to)[0]["MachineDetection"] == "Enable"
        assert dials(carrier, machine_to)[0]["Timeout"] == "45"  # detection shares the stream token's minute
        busy_call = wait_record(c, busy["call_session_id"], ended)
        machine_call = wait_record(c, machine["call_session_id"], ended)
    assert (busy_call["disconnection_reason"], busy_call["carrier_status"]) == ("dial_busy", "busy"), busy_call
    assert machine_call["disconnection_reason"] == "voicemail" and machine_call["ended_by"] == "agent", machine_call
    assert machine_call["answered_by"] == "machine_start" and machine_call["carrier_status"] == "completed"
    view = carrier_view(carrier, machine["telephony_leg_id"], wait=10, delivered={"completed"})
    # We hung up on it: through the REST API, or by refusing its stream (Twilio then reads on to <Hangup/>).
    assert view["status"] == "completed" and view["hung_up_by"] in ("rest", "twiml"), view
    assert all(cb["http_status"] == 204 for cb in view["callbacks"]), view["callbacks"]


def test_a_whole_outbound_call_through_the_emulated_carrier(srv, ws, carrier):
    with srv.client() as c:
        placed = place(c, to=number(ANSWER), agent_id=ws.with_vars, variables={"name": "Ada", "day": "Friday"})
        view = carrier_view(carrier, placed["telephony_leg_id"], wait=60, delivered={"completed"})
        call = wait_record(c, placed["call_session_id"], ended)
    assert view["status"] == "completed" and view["hung_up_by"] == "callee", view
    assert view["callee_said"] == ["What are your opening hours?"] and view["heard_agent_secs"] > 4, view
    assert [cb["status"] for cb in view["callbacks"]] == ["initiated", "ringing", "in-progress", "completed"]
    assert all(cb["http_status"] == 204 for cb in view["callbacks"]), view["callbacks"]
    assert call["disconnection_reason"] == "caller_hangup" and call["carrier_status"] == "completed", call
    assert call["duration_secs"] == int(view["duration"]) >= 3 and call["started_at"], call
    turns = [(t.role, t.text) for t in asyncio.run(stored_turns(srv.database_url, placed["call_session_id"]))]
    assert turns[0][0] == "assistant" and turns[0][1].startswith("Hello Ada"), turns
    assert any(role == "assistant" and "open every day" in text for role, text in turns), turns


async def stored_turns(database_url: str, call_id: str) -> list:
    """The call's transcript from the server's database, whichever backend it is on."""
    engine = store_db.create_engine(database_url)
    try:
        return await repo.transcript(store_db.sessionmaker(engine), call_id)
    finally:
        await engine.dispose()


# --- in process: variables, the dialer seam, the status query --------------------------------------------------------

def test_placeholders_are_found_filled_and_left_when_unknown():
    agent = AgentConfig.model_validate(agent_config(
        "v", system_prompt="Remind {{name}} about {{ day }}; ignore {single} and {{ not valid }}.",
        welcome_message="Hi {{name}}!", call={"transfer": {"number": "+15550100099", "message": "Hold on, {{name}}."}}))
    assert placeholders(agent) == {"name", "day"}
    assert missing(agent, {"name": "Ada", "day": ""}) == ["day"] and missing(agent, None) == ["day", "name"]
    filled = render(agent, {"name": "Ada", "day": "Friday"})
    assert filled.system_prompt == "Remind Ada about Friday; ignore {single} and {{ not valid }}."
    assert filled.welcome_message == "Hi Ada!" and filled.call.transfer.message == "Hold on, Ada."
    assert render(agent, None).welcome_message == "Hi {{name}}!"  # an inbound call: left as written
    assert agent.welcome_message == "Hi {{name}}!"  # the stored config is not touched


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request, tmp_path):
    from sqlalchemy import text

    url = f"sqlite+aiosqlite:///{tmp_path / 'v.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres").url
    engine = store_db.create_engine(url)
    if request.param == "postgresql":
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    await store_db.migrate(engine)
    yield store_db.sessionmaker(engine)
    await engine.dispose()


async def test_migration_0004_adds_the_outbound_columns_and_downgrades(database):
    from alembic import command
    from sqlalchemy import inspect

    added = {"request_id", "variables", "call_metadata", "duration_secs", "from_phone_number_id", "carrier_status",
             "answered_by", "batch_id", "batch_item_id"}

    def columns(connection) -> set[str]:
        return {c["name"] for c in inspect(connection).get_columns("calls")}

    def down_and_up(connection) -> None:
        assert added <= columns(connection)
        assert {"ix_calls_request_id", "ix_calls_batch_id", "ix_calls_batch_item_id"} <= \
               {i["name"] for i in inspect(connection).get_indexes("calls")}
        cfg = store_db.alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0003")
        assert not added & columns(connection) and "ended_by" in columns(connection)
        command.upgrade(cfg, "head")

    engine = database.kw["bind"]
    async with engine.begin() as conn:
        await conn.run_sync(down_and_up)
    ws_id, _, _ = await _workspace(database)  # and the store works again
    call = await repo.create_call(database, workspace_id=ws_id, direction="outbound", status="queued",
                                  variables={"name": "Ada"}, call_metadata={"k": [1]}, request_id="r")
    assert (await repo.get_call(database, call.id)).call_metadata == {"k": [1]}


async def _workspace(db) -> tuple[str, Agent, PhoneNumber]:
    ws = await repo.ensure_workspace(db, "default")
    agent = await repo.upsert_agent(db, ws.id, AgentConfig.model_validate(
        agent_config("a", system_prompt="Call {{name}}.")))
    line = await repo.map_number(db, number("0"), agent)
    return ws.id, agent, line


async def test_racing_callbacks_end_on_the_furthest_status(database):
    ws_id, agent, _ = await _workspace(database)
    order = ["queued", "initiated", "ringing", "in-progress", "completed"]
    for attempt in range(5):
        call = await repo.create_call(database, workspace_id=ws_id, agent_id=agent.id, direction="outbound",
                                      status="queued")
        shuffled = [order[(i + attempt) % len(order)] for i in range(len(order))] * 2
        await asyncio.gather(*(repo.update_call_status(database, call.id, s, call_sid="CA1",
                                                       duration_secs=3 if s == "completed" else None)
                               for s in shuffled))
        row = await repo.get_call(database, call.id)
        assert (row.carrier_status, row.duration_secs, row.twilio_call_sid) == ("completed", 3, "CA1"), attempt
        assert row.status in ("queued", "initiated", "ringing", "in-progress")  # closing is end_call's, not this
    call = await repo.create_call(database, workspace_id=ws_id, agent_id=agent.id, direction="outbound",
                                  status="queued", twilio_call_sid="CA1")
    assert not await repo.update_call_status(database, call.id, "ringing", call_sid="CA2"), "another call's sid"
    assert await repo.update_call_status(database, call.id, "ringing", call_sid="CA1")
    assert not await repo.update_call_status(database, call.id, "ringing", call_sid="CA1"), "a repeat moved it"
    assert (await repo.get_call(database, call.id)).status == "ringing"


def _runtime(db, tmp_path, **settings) -> Runtime:
    config = Settings(_env_file=None, **{"data_dir": tmp_path, "public_url": "https://voice.example.com",
                                         "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, **settings})
    return Runtime(settings=config, engine=None, db=db, tokens=StreamTokens("k" * 32, 60))


async def _calls(db) -> int:
    from sqlalchemy import func, select

    from runtime.store.models import Call

    async with db() as s:
        return await s.scalar(select(func.count()).select_from(Call))


async def test_the_dialer_refuses_before_creating_anything_and_reports_an_unreachable_carrier(database, tmp_path):
    from telephony.twilio.dialer import DialerNotConfigured, MissingVariables, NotDialable, place_call

    ws_id, agent, line = await _workspace(database)
    dead = f"http://127.0.0.1:{free_port()}"
    rt = _runtime(database, tmp_path, TWILIO_API_BASE_URL=dead)
    with pytest.raises(MissingVariables, match="name") as missing_error:
        await place_call(rt, workspace_id=ws_id, agent=agent, line=line, to=number(), variables={"nom": "x"})
    assert missing_error.value.names == ["name"]
    with pytest.raises(NotDialable, match="to: "):
        await place_call(rt, workspace_id=ws_id, agent=agent, line=line, to="123", variables={"name": "Ada"})
    for settings, code in (({"public_url": None, "TWILIO_API_BASE_URL": dead}, "public_url_not_configured"),
                           ({"TWILIO_AUTH_TOKEN": None}, "twilio_not_configured")):
        with pytest.raises(DialerNotConfigured) as not_configured:
            await place_call(_runtime(database, tmp_path, **settings), workspace_id=ws_id, agent=agent, line=line,
                             to=number(), variables={"name": "Ada"})
        assert not_configured.value.code == code
    assert await _calls(database) == 0

    placed = await place_call(rt, workspace_id=ws_id, agent=agent, line=line, to=number(), variables={"name": "Ada"},
                              metadata={"k": 1}, batch_id="b" * 32, batch_item_id="i" * 32)
    assert placed.status == "failed" and placed.twilio_call_sid is None and "unreachable" in placed.reason, placed
    assert placed.from_number == line.number and re.fullmatch(r"[0-9a-f-]{36}", placed.request_id)
    row = await repo.get_call(database, placed.call_id)
    assert (row.status, row.disconnection_reason, row.ended_by) == ("failed", "dial_failed", "system")
    assert (row.batch_id, row.batch_item_id, row.variables, row.call_metadata) == \
           ("b" * 32, "i" * 32, {"name": "Ada"}, {"k": 1})
    assert row.error_detail == placed.reason and row.request_id == placed.request_id
