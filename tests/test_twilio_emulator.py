"""`voxline emulate twilio`: the Twilio emulator answers the real `twilio` client like Twilio does, and carries the
calls: ringing and the rule's outcome, signed status callbacks in order, TwiML (inline or fetched signed), a media
stream with a scripted callee, REST hang-ups and transfers, and inbound calls placed on the real voxline server."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import websockets
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from telephony.twilio.emulator import RuleSet
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, DEMO_NUMBER, ROOT, free_port, server_env

BUSY, NO_ANSWER, FAILED, MACHINE, RINGS_LONG = "+15550177001", "+15550177002", "+15550177003", "+15550177004", \
    "+15550177005"
SCRIPTED = "+15550177101"
FROM = "+15550100000"
RULES = f"""
default: {{outcome: answer, ring_secs: 0.1}}
rules:
  - {{match: "{BUSY}", outcome: busy, ring_secs: 0.1}}
  - {{match: "{NO_ANSWER}", outcome: no-answer, ring_secs: 0.1}}
  - {{match: "{FAILED}", outcome: failed}}
  - {{match: "{MACHINE}", outcome: machine, ring_secs: 0.1}}
  - {{match: "{RINGS_LONG}", ring_secs: 30}}
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    base = tmp_path_factory.mktemp("twilio-emu")
    (base / "rules.yaml").write_text(RULES)
    port = free_port()
    env = server_env(base, {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN})
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "emulate", "twilio", "--port", str(port),
                             "--rules", str(base / "rules.yaml")],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/_emulator/requests", timeout=1)
            break
        except httpx.HTTPError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def client(url: str, token: str = AUTH_TOKEN) -> Client:
    c = Client(ACCOUNT_SID, token)
    c.api.base_url = url
    return c


def call_view(url: str, call_sid: str, wait: float = 0.0) -> dict:
    r = httpx.get(f"{url}/_emulator/calls/{call_sid}", params={"wait": wait}, timeout=wait + 10)
    assert r.status_code == 200, r.text
    return r.json()


class Receiver:
    """A customer's web server: takes status callbacks (/cb, /fail answers 500) and serves TwiML (/twiml), checking
    each request's X-Twilio-Signature the way the twilio SDK documents it."""

    def __init__(self):
        self.requests: list[dict] = []
        self.twiml = "<Response><Say>from the url</Say></Response>"
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self, body: str):
                url = f"http://127.0.0.1:{receiver.port}{self.path}"
                params = dict(parse_qsl(body, keep_blank_values=True))
                valid = RequestValidator(AUTH_TOKEN).validate(url, params, self.headers.get("X-Twilio-Signature", ""))
                query = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
                path = urlsplit(self.path).path
                receiver.requests.append({"method": self.command, "path": path, "params": params or query,
                                          "valid": valid})
                status, text = (500, "boom") if path == "/fail" else (200, receiver.twiml if path == "/twiml" else "")
                self.send_response(status)
                self.send_header("content-type", "application/xml" if path == "/twiml" else "text/plain")
                self.send_header("content-length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(text.encode())

            def do_POST(self):
                self._handle(self.rfile.read(int(self.headers.get("content-length", 0))).decode())

            def do_GET(self):
                self._handle("")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, call_sid: str, path: str = "/cb") -> list[dict]:
        return [r for r in self.requests if r["params"].get("CallSid") == call_sid and r["path"] == path]

    def wait(self, call_sid: str, count: int, path: str = "/cb", timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.of(call_sid, path)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.of(call_sid, path)


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


# --- the REST resource ---------------------------------------------------------------------------------------------

def test_create_fetch_and_cancel_a_ringing_call(emulator):
    c = client(emulator)
    call = c.calls.create(to=RINGS_LONG, from_=FROM, twiml="<Response><Say>Hi</Say></Response>")
    assert call.sid.startswith("CA") and call.status == "queued" and call.to == RINGS_LONG
    assert c.calls(call.sid).fetch().status in ("queued", "ringing")
    assert c.calls(call.sid).update(status="canceled").status == "canceled"
    with pytest.raises(TwilioRestException) as err:  # a finished call cannot be redirected
        c.calls(call.sid).update(twiml="<Response><Dial>+15550100099</Dial></Response>")
    assert err.value.status == 400 and err.value.code == 21220
    assert c.calls(call.sid).fetch().duration == "0"


def test_bad_credentials_and_bad_requests_are_refused_like_twilio(emulator):
    with pytest.raises(TwilioRestException) as err:
        client(emulator, "wrong-token").calls.create(to="+15550100010", from_=FROM, twiml="<Response/>")
    assert err.value.status == 401 and err.value.code == 20003
    with pytest.raises(TwilioRestException) as err:
        client(emulator).calls.create(to="+15550100010", from_=FROM)
    assert err.value.status == 400 and err.value.code == 21205
    with pytest.raises(TwilioRestException) as err:
        client(emulator).calls.create(to="not a number", from_=FROM, twiml="<Response/>")
    assert err.value.status == 400 and err.value.code == 21211
    with pytest.raises(TwilioRestException) as err:
        client(emulator).calls("CA" + "0" * 32).fetch()
    assert err.value.status == 404


# --- outcomes and status callbacks ---------------------------------------------------------------------------------

def test_a_busy_number_rings_then_is_busy_with_signed_callbacks_in_order(emulator, receiver):
    call = client(emulator).calls.create(
        to=BUSY, from_=FROM, twiml="<Response/>", status_callback=receiver.url + "/cb",
        status_callback_event=["initiated", "ringing", "answered", "completed"])
    got = receiver.wait(call.sid, 3)
    assert [r["params"]["CallStatus"] for r in got] == ["initiated", "ringing", "busy"]
    assert all(r["valid"] and r["method"] == "POST" for r in got)
    assert [r["params"]["SequenceNumber"] for r in got] == ["0", "1", "2"]
    for r in got:
        p = r["params"]
        assert p["AccountSid"] == ACCOUNT_SID and p["From"] == FROM and p["To"] == BUSY
        assert p["Direction"] == "outbound-api" and p["ApiVersion"] == "2010-04-01"
        assert p["CallbackSource"] == "call-progress-events" and p["Timestamp"].endswith("+0000")
        assert "AnsweredBy" not in p
    assert "CallDuration" not in got[1]["params"]
    assert got[2]["params"]["CallDuration"] == "0" and got[2]["params"]["Duration"] == "0"
    assert client(emulator).calls(call.sid).fetch().status == "busy"
    view = call_view(emulator, call.sid)
    assert [(cb["status"], cb["http_status"]) for cb in view["callbacks"]] == [
        ("initiated", 200), ("ringing", 200), ("busy", 200)]
    assert view["answered"] is False and view["outcome"] == "busy"


def test_no_answer_and_failed_numbers(emulator, receiver):
    c = client(emulator)
    no_answer = c.calls.create(to=NO_ANSWER, from_=FROM, twiml="<Response/>", status_callback=receiver.url + "/cb")
    failed = c.calls.create(to=FAILED, from_=FROM, twiml="<Response/>", status_callback=receiver.url + "/cb",
                            status_callback_event=["initiated", "ringing"])
    # No events asked: only the terminal one, which Twilio always sends.
    assert [r["params"]["CallStatus"] for r in receiver.wait(no_answer.sid, 1)] == ["no-answer"]
    # An unreachable number fails without ringing.
    assert [r["params"]["CallStatus"] for r in receiver.wait(failed.sid, 2)] == ["initiated", "failed"]
    assert all(r["valid"] for r in receiver.of(no_answer.sid) + receiver.of(failed.sid))
    assert c.calls(no_answer.sid).fetch().status == "no-answer"
    assert c.calls(failed.sid).fetch().status == "failed"
    # Ringing past the call's own Timeout is no answer too.
    late = c.calls.create(to=RINGS_LONG, from_=FROM, twiml="<Response/>", timeout=1)
    assert call_view(emulator, late.sid, wait=5)["status"] == "no-answer"


def test_an_answered_call_runs_its_twiml_and_completes_with_a_duration(emulator, receiver):
    c = client(emulator)
    call = c.calls.create(to="+15550177201", from_=FROM, twiml="<Response><Say>hi</Say></Response>",
                          status_callback=receiver.url + "/cb",
                          status_callback_event=["initiated", "ringing", "answered", "completed"])
    got = receiver.wait(call.sid, 4)
    assert [r["params"]["CallStatus"] for r in got] == ["initiated", "ringing", "in-progress", "completed"]
    assert all(r["valid"] for r in got)
    assert int(got[-1]["params"]["CallDuration"]) >= 1 and got[-1]["params"]["Duration"] == "1"
    fetched = c.calls(call.sid).fetch()
    assert fetched.status == "completed" and int(fetched.duration) >= 1 and fetched.start_time is not None
    view = call_view(emulator, call.sid)
    assert view["answered"] and view["said"] == ["hi"] and view["hung_up_by"] == "twiml"


def test_url_twiml_is_fetched_signed_and_machine_detection_reports_a_machine(emulator, receiver):
    receiver.twiml = "<Response><Say>Please call us back.</Say><Hangup/></Response>"
    call = client(emulator).calls.create(
        to=MACHINE, from_=FROM, url=receiver.url + "/twiml", machine_detection="Enable",
        status_callback=receiver.url + "/cb", status_callback_method="GET", status_callback_event=["answered"])
    fetched = receiver.wait(call.sid, 1, path="/twiml")
    assert len(fetched) == 1 and fetched[0]["valid"] and fetched[0]["method"] == "POST"
    p = fetched[0]["params"]
    assert p["AnsweredBy"] == "machine_start" and p["CallStatus"] == "in-progress"
    assert p["Direction"] == "outbound-api" and p["To"] == MACHINE
    got = receiver.wait(call.sid, 2)
    assert [(r["method"], r["params"]["CallStatus"], r["params"]["AnsweredBy"]) for r in got] == [
        ("GET", "in-progress", "machine_start"), ("GET", "completed", "machine_start")]
    assert all(r["valid"] for r in got)  # a GET callback is signed over its URL with the query
    view = call_view(emulator, call.sid, wait=5)
    assert view["answered_by"] == "machine_start" and view["said"] == ["Please call us back."]


def test_a_failing_callback_target_is_logged_not_retried(emulator, receiver):
    call = client(emulator).calls.create(to=BUSY, from_=FROM, twiml="<Response/>",
                                         status_callback=receiver.url + "/fail", status_callback_event=["ringing"])
    assert len(receiver.wait(call.sid, 2, path="/fail")) == 2
    time.sleep(0.5)
    assert [r["params"]["CallStatus"] for r in receiver.of(call.sid, "/fail")] == ["ringing", "busy"]
    view = call_view(emulator, call.sid)
    assert [cb["http_status"] for cb in view["callbacks"]] == [500, 500]
    assert all(cb["error"].startswith("11200") for cb in view["callbacks"])


# --- the media stream ----------------------------------------------------------------------------------------------

class StreamServer:
    """A minimal media-stream server: /talk plays 0.4 s and a mark, and clears after the caller's `#`; /hold just
    listens; /close closes right after `start`. Each checks the upgrade's signature."""

    def __init__(self):
        self.port = free_port()
        self.sessions: list[dict] = []

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def handle(self, ws):
        path = ws.request.path
        session = {"path": path, "messages": [], "closed": asyncio.Event(), "started": asyncio.Event(),
                   "valid": RequestValidator(AUTH_TOKEN).validate(self.url(path), {},
                                                                   ws.request.headers.get("X-Twilio-Signature", ""))}
        self.sessions.append(session)
        try:
            async for raw in ws:
                message = json.loads(raw)
                if message["event"] == "media":
                    continue
                session["messages"].append(message)
                sid = message.get("streamSid")
                if message["event"] == "start":
                    session["started"].set()
                    if path == "/close":
                        await ws.close()
                    elif path == "/talk":
                        for _ in range(20):  # 0.4 s of a loud square wave
                            payload = base64.b64encode(bytes([0x10, 0x90] * 80)).decode()
                            await ws.send(json.dumps({"event": "media", "streamSid": sid,
                                                      "media": {"payload": payload}}))
                        await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "m1"}}))
                elif message["event"] == "dtmf" and message["dtmf"]["digit"] == "#":
                    await ws.send(json.dumps({"event": "clear", "streamSid": sid}))
        except websockets.ConnectionClosed:
            pass
        finally:
            session["closed"].set()

    def events(self, session: dict) -> list[str]:
        return [m["event"] for m in session["messages"]]


@pytest.fixture
async def streams():
    s = StreamServer()
    async with websockets.serve(s.handle, "127.0.0.1", s.port):
        yield s


def stream_twiml(url: str, after: str = "") -> str:
    return (f'<Response><Connect><Stream url="{url}"><Parameter name="greeting" value="x"/></Stream></Connect>'
            f"{after}</Response>")


async def test_a_scripted_callee_talks_to_a_media_stream(emulator, streams):
    r = await asyncio.to_thread(httpx.post, f"{emulator}/_emulator/rules", json={
        "match": SCRIPTED, "ring_secs": 0.1,
        "callee": [{"wait_agent": 5}, {"dtmf": "12#"}, {"pause": 0.3}, {"hangup": True}]})
    assert r.status_code == 200, r.text
    call = await asyncio.to_thread(client(emulator).calls.create, to=SCRIPTED, from_=FROM,
                                   twiml=stream_twiml(streams.url("/talk"), "<Say>never reached</Say>"))
    view = await asyncio.to_thread(call_view, emulator, call.sid, 15)
    session = streams.sessions[0]
    await asyncio.wait_for(session["closed"].wait(), 5)
    assert session["valid"]
    assert streams.events(session) == ["connected", "start", "mark", "dtmf", "dtmf", "dtmf", "stop"]
    start = session["messages"][1]["start"]
    assert start["callSid"] == call.sid and start["accountSid"] == ACCOUNT_SID
    assert start["customParameters"] == {"greeting": "x"}
    assert [m["dtmf"]["digit"] for m in session["messages"] if m["event"] == "dtmf"] == ["1", "2", "#"]
    assert view["status"] == "completed" and view["hung_up_by"] == "callee" and view["said"] == []
    assert abs(view["heard_agent_secs"] - 0.4) < 0.01 and view["dtmf_sent"] == "12#"
    assert view["marks"] == ["m1"] and view["marks_echoed"] == ["m1"] and view["clears"] == 1
    assert view["stream"]["parameters"] == {"greeting": "x"} and int(view["duration"]) >= 1


async def test_rest_updates_end_or_move_a_streaming_call(emulator, streams):
    c = client(emulator)
    # A transfer: Twilio ends the stream leg (stop, then close) and dials the new number.
    moved = await asyncio.to_thread(c.calls.create, to="+15550177301", from_=FROM,
                                    twiml=stream_twiml(streams.url("/hold")))
    await asyncio.wait_for(_started(streams, 0), 10)
    await asyncio.to_thread(c.calls(moved.sid).update, twiml="<Response><Dial>+15550100099</Dial></Response>")
    await asyncio.wait_for(streams.sessions[0]["closed"].wait(), 5)
    assert streams.events(streams.sessions[0])[-1] == "stop"
    view = await asyncio.to_thread(call_view, emulator, moved.sid, 5)
    assert view["transfer_to"] == "+15550100099" and view["status"] == "completed" and view["hung_up_by"] == "transfer"

    # A hang-up by REST.
    ended = await asyncio.to_thread(c.calls.create, to="+15550177302", from_=FROM,
                                    twiml=stream_twiml(streams.url("/hold")))
    await asyncio.wait_for(_started(streams, 1), 10)
    assert (await asyncio.to_thread(c.calls(ended.sid).update, status="completed")).status == "completed"
    await asyncio.wait_for(streams.sessions[1]["closed"].wait(), 5)
    assert streams.events(streams.sessions[1])[-1] == "stop"
    view = await asyncio.to_thread(call_view, emulator, ended.sid, 5)
    assert view["hung_up_by"] == "rest" and view["duration"] is not None

    # The server closing the socket: TwiML goes on after </Connect>.
    closed = await asyncio.to_thread(c.calls.create, to="+15550177303", from_=FROM,
                                     twiml=stream_twiml(streams.url("/close"), "<Say>after</Say>"))
    view = await asyncio.to_thread(call_view, emulator, closed.sid, 10)
    assert view["said"] == ["after"] and view["status"] == "completed"
    assert "the stream server closed the socket" in view["notes"]


async def _started(streams: StreamServer, index: int) -> None:
    while len(streams.sessions) <= index:
        await asyncio.sleep(0.02)
    await streams.sessions[index]["started"].wait()


# --- rules, stats --------------------------------------------------------------------------------------------------

def test_stats_count_concurrent_calls_and_reset_forgets(emulator):
    assert httpx.post(f"{emulator}/_emulator/reset").json()["total"] == 0
    c = client(emulator)
    calls = [c.calls.create(to=f"+1555017740{i}", from_=FROM, twiml='<Response><Pause length="1"/></Response>')
             for i in range(2)]
    assert all(call_view(emulator, call.sid, 10)["status"] == "completed" for call in calls)
    stats = httpx.get(f"{emulator}/_emulator/stats").json()
    assert stats["active"] == 0 and stats["max_concurrent"] == 2 and stats["total"] == 2
    assert stats["by_status"] == {"completed": 2}
    assert httpx.post(f"{emulator}/_emulator/reset").json() == {"active": 0, "max_concurrent": 0, "total": 0,
                                                               "by_status": {}}
    assert httpx.get(f"{emulator}/_emulator/calls/{calls[0].sid}").status_code == 404


def test_rules_match_numbers_and_refuse_mistakes(emulator):
    rules = RuleSet.parse({"rules": [{"match": "+1555*", "outcome": "busy"},
                                     {"match": ["re:^\\+44", "+33123"], "outcome": "failed"}],
                           "default": {"outcome": "no-answer"}})
    assert rules.for_number("+15551234567").outcome == "busy"
    assert rules.for_number("+447700900000").outcome == "failed" and rules.for_number("+33123").outcome == "failed"
    assert rules.for_number("+4915").outcome == "no-answer"
    assert [s.kind for s in rules.for_number("+1555").script] == ["wait_agent", "say", "wait_agent", "hangup"]
    for bad, message in [({"match": "+1", "outcome": "maybe"}, "outcome"), ({"outcome": "busy"}, "match"),
                         ({"match": "+1", "callee": [{"sing": "la"}]}, "step 0"),
                         ({"match": "+1", "callee": [{"play": "missing.wav"}]}, "no such WAV"),
                         ({"match": "+1", "ring_secs": -1}, "ring_secs")]:
        with pytest.raises(ValueError, match=message):
            RuleSet.parse([bad])
        r = httpx.post(f"{emulator}/_emulator/rules", json=bad)
        assert r.status_code == 400 and message.split()[0] in r.json()["error"]


# --- inbound calls on the real server ------------------------------------------------------------------------------

async def test_an_inbound_call_converses_with_the_demo_agent(server, twilio_api):
    async with httpx.AsyncClient(base_url=twilio_api.url, timeout=90) as http:
        r = await http.post("/_emulator/inbound", json={"to": DEMO_NUMBER, "from": "+15550199998",
                                                        "server": server.url, "record": True})
        assert r.status_code == 201, r.text
        placed = r.json()
        assert placed["webhook"]["http_status"] == 200 and placed["direction"] == "inbound"
        view = (await http.get(f"/_emulator/calls/{placed['sid']}", params={"wait": 60})).json()
        assert view["status"] == "completed", view
        assert view["stream"]["url"] == server.stream_url and "call_id" in view["stream"]["parameters"]
        assert view["callee_said"] == ["Hello, what are your opening hours?"] and view["hung_up_by"] == "callee"
        assert view["heard_agent_secs"] > 4.0 and not view["notes"], view  # the welcome and the reply
        wav = await http.get(f"/_emulator/calls/{placed['sid']}/audio.wav")
        assert wav.status_code == 200 and wav.content[:4] == b"RIFF"
    call_id = view["stream"]["parameters"]["call_id"]
    row = server.wait_ended(call_id, 10)
    assert row["twilio_call_sid"] == placed["sid"]
    replies = [t["text"] for t in server.turns(call_id) if t["role"] == "assistant"]
    assert any("open every day" in text for text in replies), replies


async def test_inbound_calls_the_server_refuses_are_recorded(server, twilio_api):
    async with httpx.AsyncClient(base_url=twilio_api.url, timeout=30) as http:
        r = await http.post("/_emulator/inbound", json={"to": "+15550177999", "server": server.url})
        view = (await http.get(f"/_emulator/calls/{r.json()['sid']}", params={"wait": 10})).json()
        assert view["status"] == "completed" and view["stream"] is None and view["hung_up_by"] == "twiml"
        assert view["said"] == ["Sorry, this number is not in service. Goodbye."]
        # Signed over the wrong URL, the webhook refuses it: Twilio's application error.
        r = await http.post("/_emulator/inbound", json={"to": DEMO_NUMBER, "server": server.url,
                                                        "public_url": "https://elsewhere.example"})
        view = r.json()
        assert view["webhook"]["http_status"] == 403 and view["error"].startswith("11200")
        assert view["status"] == "completed"
