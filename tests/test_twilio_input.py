"""What Twilio (or anything posing as it) sends that does not fit the database: the webhook, the status callback and
the media stream's `start` refuse or drop such values with a precise log line, never a 500 or a dropped socket, and
every call still ends with a reason; an inbound call whose stream never comes is closed once its token expires.

On SQLite and on PostgreSQL (which refuses over-long strings, NULs and int4 overflows where SQLite stores them),
against real servers over real sockets, with requests signed as Twilio signs them.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time

import asyncpg
import httpx
import pytest
from twilio.request_validator import RequestValidator

from telephony.twilio.caller import Answer, MediaStreamCaller, parse_twiml, sid
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, DEMO_NUMBER, start_api_server, start_server, stop_server
from tests.webhook_receiver import receiver  # noqa: F401 (a fixture)

TOKEN_TTL = 3  # seconds; the unstreamed-call sweep closes a call TOKEN_TTL + 5 s (its grace) after it was answered
ENV = {
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
    "VOXLINE_STREAM_TOKEN_TTL_SECS": str(TOKEN_TTL), "VOXLINE_CALL_HEARTBEAT_SECS": "0.3",
    "VOXLINE_RATE_LIMIT_PER_MINUTE": "100000", "VOXLINE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
    "VOXLINE_WEBHOOK_POLL_SECS": "0.1",
}
SIP_FROM = "sip:+15551234567@acme-corp.sip.twilio.com"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request, tmp_path_factory):
    pg = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    api = start_api_server(tmp_path_factory.mktemp(f"twilio-input-{request.param}"), request.param, ENV, pg)
    yield api
    stop_server(api.server)


# --- helpers --------------------------------------------------------------------------------------------------------

def signed(url: str, path: str, params: dict[str, str]) -> httpx.Response:
    """A form POST signed as Twilio signs it (over every parameter, NULs included)."""
    signature = RequestValidator(AUTH_TOKEN).compute_signature(url + path, params)
    return httpx.post(url + path, data=params, headers={"X-Twilio-Signature": signature}, timeout=30)


def incoming(url: str, **over: str) -> Answer:
    params = {"AccountSid": ACCOUNT_SID, "CallSid": sid("CA"), "From": "+15550199999", "To": DEMO_NUMBER,
              "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01", **over}
    r = signed(url, "/telephony/twilio/voice", params)
    assert r.status_code == 200, r.text
    return parse_twiml(r.status_code, r.text)


def status(url: str, call_sid: str, call_status: str, **extra: str) -> httpx.Response:
    return signed(url, "/telephony/twilio/status", {"AccountSid": ACCOUNT_SID, "ApiVersion": "2010-04-01",
                                                   "CallSid": call_sid, "CallStatus": call_status, **extra})


def record(api, call_id: str) -> dict:
    with api.client() as c:
        r = c.get(f"/api/v1/calls/{call_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_ended(api, call_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (found := record(api, call_id))["ended_at"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def sql(api, statement: str, *args) -> list:
    """Run one statement on the server's database (`?` placeholders); its rows."""
    if api.backend == "sqlite":
        con = sqlite3.connect(api.database_url.split("///", 1)[1], timeout=30)
        try:
            rows = con.execute(statement, args).fetchall()
            con.commit()
            return rows
        finally:
            con.close()

    async def run():
        n, parts = 0, []
        for ch in statement:
            n += ch == "?"
            parts.append(f"${n}" if ch == "?" else ch)
        conn = await asyncpg.connect(api.database_url.replace("+asyncpg", ""))
        try:
            return [tuple(r) for r in await conn.fetch("".join(parts), *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


def log_after(api, mark: int) -> str:
    """What the server logged since `mark` (a length of its log)."""
    return api.server.log()[mark:]


def no_errors(log: str) -> None:
    assert "internal_error" not in log and "Exception in ASGI application" not in log and "Traceback" not in log


def call_count(api) -> int:
    return sql(api, "SELECT count(*) FROM calls")[0][0]


# --- 3a: status callbacks -------------------------------------------------------------------------------------------

def test_status_callback_values_that_do_not_fit_are_dropped_and_a_final_status_still_closes_the_call(srv):
    call_sid, mark = sid("CA"), len(srv.server.log())
    call_id = incoming(srv.url, CallSid=call_sid).parameters["call_id"]
    callbacks = [
        ("ringing", {"CallDuration": "9" * 30}),  # OverflowError on SQLite
        ("ringing", {"CallDuration": "3000000000"}),  # over int4 on PostgreSQL
        ("in-progress", {"CallDuration": "-5", "AnsweredBy": "h" * 40}),  # over calls.answered_by's 32
        ("completed", {"CallDuration": "1e3", "AnsweredBy": "hu\x00man"}),  # NUL: PostgreSQL refuses it
    ]
    for call_status, extra in callbacks:
        r = status(srv.url, call_sid, call_status, **extra)
        assert r.status_code == 204, (call_status, extra, r.text)
    closed = record(srv, call_id)
    # The final status was recorded and closed the (never streamed) call, without the values that did not fit.
    assert closed["ended_at"] and closed["carrier_status"] == "completed", closed
    assert (closed["status"], closed["disconnection_reason"]) == ("failed", "error_carrier"), closed
    assert closed["duration_secs"] is None and closed["answered_by"] is None, closed
    # A later callback with a sane duration still fills it in.
    assert status(srv.url, call_sid, "completed", CallDuration="12").status_code == 204
    assert record(srv, call_id)["duration_secs"] == 12
    log = log_after(srv, mark)
    about = f"status callback for call {call_id} (CallSid {call_sid}, "
    assert about + "ringing): CallDuration is out of range: '999999999999999999999999999999' (at most 86400)" in log
    assert about + "ringing): CallDuration is out of range: '3000000000' (at most 86400)" in log
    assert about + "in-progress): CallDuration is not a non-negative integer: '-5'; that field is ignored" in log
    assert about + "in-progress): AnsweredBy is 40 characters long (at most 32)" in log
    assert about + "completed): AnsweredBy has characters other than letters, digits, '-' and '_': 'hu\\x00man'" in log
    no_errors(log)


def test_a_status_callback_whose_callsid_is_no_sid_is_ignored(srv):
    mark = len(srv.server.log())
    for bad, problem in [("CA\x00" + "1" * 31, "has characters other than letters"),
                         ("CA" + "1" * 70, "is 72 characters long (at most 64)")]:
        r = status(srv.url, bad, "completed", CallDuration="3")
        assert r.status_code == 204, r.text
        assert f"status callback: ignored: CallSid {problem}" in srv.server.log()
    no_errors(log_after(srv, mark))


# --- 3b: incoming calls from (and to) SIP addresses; values the columns cannot hold -----------------------------

def test_a_call_from_a_sip_address_reaches_its_agent(srv):
    answer = incoming(srv.url, From=SIP_FROM)
    assert answer.stream_url and not answer.said, answer.twiml
    call = record(srv, answer.parameters["call_id"])
    assert (call["from_number"], call["to_number"], call["status"]) == (SIP_FROM, DEMO_NUMBER, "ringing"), call


def test_a_call_to_a_sip_address_reaches_the_agent_of_its_number(srv):
    to = f"sip:{DEMO_NUMBER}@acme-corp.sip.twilio.com;transport=tls"
    answer = incoming(srv.url, From=SIP_FROM, To=to)
    assert answer.stream_url and not answer.said, answer.twiml
    call = record(srv, answer.parameters["call_id"])
    assert (call["from_number"], call["to_number"]) == (SIP_FROM, to), call  # kept as the carrier sent them


@pytest.mark.parametrize("field, value, logged", [
    ("From", "+1555\x000199999", "From has a control character (U+0000) at position 5"),
    ("From", "sip:" + "a" * 300 + "@acme-corp.sip.twilio.com", "From is 329 characters long (at most 255)"),
    ("To", f"sip:{DEMO_NUMBER}@x\nInjected: line", "To has a control character (U+000A)"),
    ("CallSid", "CA\x00" + "1" * 31, "CallSid has characters other than letters, digits, '-' and '_'"),
    ("CallSid", "CA" + "1" * 70, "CallSid is 72 characters long (at most 64)"),
], ids=["nul-from", "long-from", "newline-to", "nul-callsid", "long-callsid"])
def test_webhook_values_the_database_cannot_hold_are_refused_with_twiml(srv, field, value, logged):
    call_sid, before = value if field == "CallSid" else sid("CA"), call_count(srv)
    answer = incoming(srv.url, **{field: value, "CallSid": call_sid})
    assert answer.stream_url is None and answer.hangup, answer.twiml
    assert "cannot be connected" in " ".join(answer.said)
    assert f"voice webhook: call refused: {logged}" in srv.server.log()
    assert call_count(srv) == before, "a refused call was stored"


# --- 3c / 7: the media stream's start -------------------------------------------------------------------------------

async def _stream_with(answer: Answer, *, auth_token: str | None = AUTH_TOKEN, **start: object) -> MediaStreamCaller:
    """Open the answer's stream with these fields changed in `start`; return once the server has closed it."""
    caller = MediaStreamCaller(answer, auth_token=auth_token, account_sid=ACCOUNT_SID)
    message = caller.start_message()
    message["start"].update(start)
    if "streamSid" in start:
        message["streamSid"] = start["streamSid"]
    caller.start_message = lambda: message
    async with caller:
        await asyncio.wait_for(caller.closed.wait(), 10)
    return caller


@pytest.mark.parametrize("start, problem", [
    ({"callSid": {"x": 1}}, "callSid is not a string (dict)"),
    ({"callSid": "CA" + "1" * 70}, "callSid is 72 characters long (at most 64)"),
    ({"streamSid": "MZ" + "2" * 70}, "streamSid is 72 characters long (at most 64)"),
    ({"streamSid": "MZ\x00" + "2" * 31}, "streamSid has characters other than letters, digits, '-' and '_'"),
], ids=["dict-callsid", "long-callsid", "long-streamsid", "nul-streamsid"])
async def test_a_start_with_fields_that_do_not_fit_is_refused_and_the_call_ends_saying_why(srv, start, problem):
    answer = await asyncio.to_thread(incoming, srv.url)
    call_id = answer.parameters["call_id"]
    caller = await _stream_with(answer, **start)
    assert caller.close_code == 1008
    call = await asyncio.to_thread(wait_ended, srv, call_id, 5)
    assert (call["status"], call["disconnection_reason"], call["stream_sid"]) == ("failed", "error_carrier", None)
    assert call["error_detail"].startswith(f"its media stream was refused: bad start: {problem}"), call
    assert f"media stream refused: call {call_id}: bad start: {problem}" in srv.server.log()


async def test_a_softphone_start_with_a_non_string_callsid_ends_the_call_saying_why(srv):
    """QA's case: a softphone call (unsigned upgrade) whose start carries `"callSid": {"x": 1}`."""
    with srv.client() as c:
        agent_id = c.get("/api/v1/agents", params={"name_search": "demo"}).json()["data"][0]["id"]
        r = c.post("/api/v1/softphone/calls", json={"agent_id": agent_id})
    assert r.status_code == 201, r.text
    placed = r.json()
    answer = Answer(status_code=200, twiml="", stream_url=placed["stream_url"], parameters=placed["parameters"])
    caller = await _stream_with(answer, auth_token=None, callSid={"x": 1})
    assert caller.close_code == 1008
    call = await asyncio.to_thread(wait_ended, srv, placed["call_id"], 5)
    assert call["disconnection_reason"] == "error_carrier", call
    assert call["error_detail"] == "its media stream was refused: bad start: callSid is not a string (dict)", call


async def test_a_database_error_while_claiming_the_stream_closes_it_with_1011(srv):
    """Any failure of the claim (here a trigger refusing it) gets a close frame and a reason, not a dropped socket."""
    boom = "MZboom" + "0" * 28
    if srv.backend == "sqlite":
        await asyncio.to_thread(sql, srv, "CREATE TRIGGER refuse_boom BEFORE UPDATE OF stream_sid ON calls "
                                          "WHEN NEW.stream_sid LIKE 'MZboom%' BEGIN SELECT RAISE(ABORT, 'boom'); END")
        drop = "DROP TRIGGER refuse_boom"
    else:
        await asyncio.to_thread(sql, srv, "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS "
                                          "$$ BEGIN RAISE EXCEPTION 'boom'; END $$")
        await asyncio.to_thread(sql, srv, "CREATE TRIGGER refuse_boom BEFORE UPDATE ON calls FOR EACH ROW "
                                          "WHEN (NEW.stream_sid LIKE 'MZboom%') EXECUTE FUNCTION refuse_boom()")
        drop = "DROP FUNCTION refuse_boom() CASCADE"
    try:
        answer = await asyncio.to_thread(incoming, srv.url)
        call_id = answer.parameters["call_id"]
        caller = await _stream_with(answer, streamSid=boom)
    finally:
        await asyncio.to_thread(sql, srv, drop)
    assert caller.close_code == 1011
    call = await asyncio.to_thread(wait_ended, srv, call_id, 5)
    assert (call["status"], call["disconnection_reason"]) == ("failed", "error_internal"), call
    assert call["error_detail"] == "its media stream was refused: database error while attaching the stream", call
    log = srv.server.log()
    assert f"call {call_id}: media stream: could not attach it to the call" in log
    assert f"media stream refused: call {call_id}: database error while attaching the stream" in log


# --- 5: an inbound call whose stream never comes --------------------------------------------------------------------

def test_an_inbound_call_whose_stream_never_comes_is_closed_once_its_token_expires(srv, receiver):  # noqa: F811
    path = receiver.path()
    with srv.client() as c:
        r = c.post("/api/v1/webhooks", json={"url": receiver.url + path, "events": ["call.ended"]})
        assert r.status_code == 201, r.text
    answered = time.monotonic()
    call_id = incoming(srv.url).parameters["call_id"]
    assert record(srv, call_id)["status"] == "ringing"
    call = wait_ended(srv, call_id, TOKEN_TTL + 15)
    took = time.monotonic() - answered
    assert TOKEN_TTL + 5 <= took, f"closed after {took:.1f} s, before its token (and the grace) expired"
    assert (call["status"], call["disconnection_reason"], call["ended_by"]) == ("failed", "error_carrier", "system")
    assert call["error_detail"].startswith("the call's media stream never connected"), call
    assert f"its stream token expired after {TOKEN_TTL} s" in call["error_detail"], call
    deadline = time.monotonic() + 15  # other tests' calls may end meanwhile: this call's event is the one awaited
    while not (ended := [g.json() for g in receiver.at(path) if g.json()["data"]["id"] == call_id]):
        assert time.monotonic() < deadline, "no call.ended event for the call"
        time.sleep(0.05)
    assert [e["type"] for e in ended] == ["call.ended"] and ended[0]["data"]["status"] == "failed", ended
    assert f"call {call_id}: closed as error_carrier: the call's media stream never connected" in srv.server.log()


def test_an_unstreamed_call_left_by_a_dead_server_is_closed_by_the_next(tmp_path):
    """Nothing in memory: the server that answered the webhook is killed; another one on the same database closes
    the call once its token has expired."""
    first = start_api_server(tmp_path, "sqlite", {**ENV, "VOXLINE_STREAM_TOKEN_TTL_SECS": "60"})
    try:
        call_id = incoming(first.url).parameters["call_id"]
    finally:
        first.server.proc.send_signal(signal.SIGKILL)
        first.server.proc.wait()
    sql(first, "UPDATE calls SET created_at = ? WHERE id = ?", "2000-01-01 00:00:00.000000", call_id)  # long ago
    second = start_server(tmp_path, auth_token=AUTH_TOKEN, extra_env={**ENV, "VOXLINE_STREAM_TOKEN_TTL_SECS": "60"})
    try:
        with httpx.Client(base_url=second.url, headers={"x-api-key": first.admin_key}, timeout=30) as c:
            deadline = time.monotonic() + 15
            while (call := c.get(f"/api/v1/calls/{call_id}").json())["ended_at"] is None:
                assert time.monotonic() < deadline, call
                time.sleep(0.1)
    finally:
        stop_server(second)
    assert (call["status"], call["disconnection_reason"]) == ("failed", "error_carrier"), call
    assert "its stream token expired after 60 s" in call["error_detail"], call
