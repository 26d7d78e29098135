"""The browser softphone: its route, its event socket, how its unsigned stream is admitted, and the page itself in
headless Chromium (Debian's, driven by Playwright) with a fake microphone that speaks a WAV.

The server requires Twilio signatures (TWILIO_AUTH_TOKEN is set), so the browser call also shows that a softphone
call streams on its signed per-call token alone while every other call still needs the signature."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import websockets
from playwright.sync_api import Browser, Page, expect, sync_playwright

from telephony.twilio.caller import Answer, MediaStreamCaller, post_incoming_call
from tests.conftest import (
    AUTH_TOKEN,
    DEMO_NUMBER,
    PHRASES,
    ROOT,
    Server,
    create_key_with_cli,
    server_env,
    start_server,
    stop_server,
)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CALLS = "/api/v1/softphone/calls"
TOKEN_TTL_SECS = 4
# Headless, as root, nothing fetched from the network (FIELD-NOTES, "Browser tests").
BASE_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]


class Softphone:
    def __init__(self, server: Server, key: str, other_key: str):
        self.server, self.key, self.other_key = server, key, other_key

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers={"x-api-key": key or self.key}, timeout=30)

    def agent_id(self, name: str) -> str:
        with self.client() as c:
            rows = c.get("/api/v1/agents", params={"name_search": name, "limit": 100}).json()["data"]
        return next(r["id"] for r in rows if r["name"] == name)

    def softphone_calls(self) -> int:
        return self.server.query("SELECT COUNT(*) AS n FROM calls WHERE direction = 'softphone'")[0]["n"]


@pytest.fixture(scope="module")
def phone(tmp_path_factory) -> Softphone:
    base = tmp_path_factory.mktemp("softphone")
    # Short stream tokens: a browser presents its token within a second, and an abandoned call is closed sooner.
    extra = {"VOXLINE_RATE_LIMIT_PER_MINUTE": "100000", "VOXLINE_STREAM_TOKEN_TTL_SECS": str(TOKEN_TTL_SECS),
             "VOXLINE_CALL_HEARTBEAT_SECS": "1"}  # the sweep that closes a call whose stream never came
    server = start_server(base, auth_token=AUTH_TOKEN, extra_env=extra)
    env = server_env(base, extra)
    try:
        yield Softphone(server, create_key_with_cli(env, "default", "admin", "softphone test"),
                        create_key_with_cli(env, "other", "admin", "other workspace"))
    finally:
        stop_server(server)
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(server.log_path, ARTIFACTS / "softphone-server.log")


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> Path:
    """The caller's words with silence around them: Chromium loops the file, and the agent greets first and must
    have time to answer before the question comes round again."""
    out = tmp_path_factory.mktemp("mic")
    raw, wav = out / "raw.wav", out / "mic.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), PHRASES["located"]], check=True)
    subprocess.run(["sox", str(raw), "-r", "48000", "-b", "16", "-c", "1", str(wav), "pad", "5", "10"], check=True)
    return wav


@pytest.fixture(scope="module")
def playwright():
    with sync_playwright() as pw:
        yield pw


def launch(pw, *flags: str) -> Browser:
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*BASE_FLAGS, *flags])


@pytest.fixture(scope="module")
def browser(playwright, mic_wav) -> Browser:
    b = launch(playwright, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
               f"--use-file-for-fake-audio-capture={mic_wav}")
    yield b
    b.close()


def wait_js(page: Page, expression: str, timeout: float) -> None:
    """Poll a page expression until true (not wait_for_function: the page's CSP forbids the eval it relies on)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {expression}; "
                                 f"page: {page.evaluate('window.softphone')}, error: {page.locator('#error').inner_text()}")
        time.sleep(0.1)


def open_page(browser: Browser, phone: Softphone, console: list[str]) -> Page:
    page = browser.new_page()
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.goto(phone.server.url + "/softphone")
    page.fill("#api-key", phone.key)
    page.click("#load-agents")
    expect(page.locator("#agent")).to_be_enabled()
    page.select_option("#agent", label="demo")
    expect(page.locator("#call")).to_be_enabled()
    return page


# --- the page in a browser ------------------------------------------------------------------------------------------

def test_a_call_from_the_browser_shows_both_sides_plays_the_agent_and_hangs_up(browser, phone):
    console: list[str] = []
    page = open_page(browser, phone, console)
    assert page.evaluate("sessionStorage.getItem('voxline.softphone.apiKey')") == phone.key
    assert page.evaluate("localStorage.length") == 0  # the key is kept for this tab only
    page.click("#call")
    wait_js(page, "window.softphone.state === 'live'", 15)
    call_id = page.evaluate("window.softphone.callId")
    try:
        transcript = page.locator("#transcript")
        # The caller's words, heard by the agent's Whisper through the page's 8 kHz μ-law, and the agent's answer.
        expect(transcript.locator(".turn.user").filter(has_text=re.compile("located", re.IGNORECASE))).to_have_count(
            1, timeout=45000)
        answer = transcript.locator(".turn.assistant").filter(has_text="Main Street").first
        expect(answer).to_be_visible(timeout=20000)
        expect(answer.locator(".latency")).to_have_text(re.compile(r"^\d+ ms$"))
        latency = int(answer.locator(".latency").inner_text().split()[0])
        assert 0 < latency < 10000
        expect(page.locator("#error")).to_be_hidden()
        stats = page.evaluate("window.softphone.stats")
        rate = page.evaluate("new AudioContext().sampleRate")
        # Agent audio reached the output: the welcome and the answer, several seconds of samples.
        assert stats["samplesPlayed"] > 3 * rate, stats
        assert stats["mediaReceived"] > 37 and stats["framesSent"] > 300, stats  # over 3 s of 80 ms messages
        # The agent's words reach its transcript when the page echoes their marks, as Twilio does once played.
        assert stats["marksEchoed"] >= 2, stats
        assert "did not echo a mark" not in phone.server.log()
        assert page.evaluate("window.softphone.eventCounts.speaking") >= 2
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "softphone.png"), full_page=True)
        assert (ARTIFACTS / "softphone.png").stat().st_size > 10000
    except AssertionError:
        print("\n".join(console[-40:]))
        raise

    page.click("#hangup")
    expect(page.locator("#status")).to_have_text("Call ended: you hung up.", timeout=10000)
    row = phone.server.wait_ended(call_id, timeout=10)
    assert row["disconnection_reason"] == "caller_hangup" and row["status"] == "completed"
    assert row["direction"] == "softphone" and row["from_number"] is None and row["twilio_call_sid"] is None
    turns = phone.server.turns(call_id)
    assert any(t["role"] == "user" and "located" in t["text"].lower() for t in turns)
    with phone.client() as c:
        record = c.get(f"/api/v1/calls/{call_id}").json()
    assert record["disconnection_reason"] == "caller_hangup" and record["direction"] == "softphone"
    page.close()


def test_a_refused_microphone_is_explained_and_places_no_call(playwright, phone):
    denied = launch(playwright, "--use-fake-device-for-media-stream", "--deny-permission-prompts")
    try:
        page = open_page(denied, phone, [])
        before = phone.softphone_calls()
        page.click("#call")
        expect(page.locator("#error")).to_contain_text("Microphone access was refused", timeout=10000)
        expect(page.locator("#status")).to_have_text("Idle")
        assert page.evaluate("window.softphone.state") == "idle"
        assert phone.softphone_calls() == before
    finally:
        denied.close()


def test_a_lost_socket_is_explained_and_the_call_closes(browser, phone):
    page = open_page(browser, phone, [])
    routes = []

    def through(ws):  # the page's stream socket, relayed to the server, so the test can cut it
        routes.append((ws, ws.connect_to_server()))

    page.route_web_socket(re.compile(r".*/telephony/twilio/stream$"), through)
    page.click("#call")
    wait_js(page, "window.softphone.state === 'live' && window.softphone.stats.mediaReceived > 10", 15)
    call_id = page.evaluate("window.softphone.callId")
    ws, server_side = routes[0]
    ws.close(code=1011, reason="network went away")
    server_side.close()
    expect(page.locator("#error")).to_contain_text("connection to the server was lost", timeout=10000)
    expect(page.locator("#status")).to_have_text(re.compile("Disconnected|Call ended"))
    row = phone.server.wait_ended(call_id, timeout=10)
    assert row["disconnection_reason"] == "error_carrier"
    page.close()


PLAYBACK_PROBE = """async () => {
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule('/softphone/worklet.js');
  const node = new AudioWorkletNode(ctx, 'voxline-playback', {numberOfInputs: 0, outputChannelCount: [1],
                                                              processorOptions: {jitterMs: 60}});
  node.connect(ctx.destination);
  const seen = [];
  let stats = null;
  const t0 = performance.now();
  node.port.onmessage = (e) => {
    if (e.data.type === 'mark') seen.push([e.data.name, Math.round(performance.now() - t0)]);
    else stats = e.data;
  };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const tone = (secs) => Float32Array.from({length: 8000 * secs}, (_, i) => 0.3 * Math.sin(i / 3));
  node.port.postMessage({type: 'audio', pcm: tone(0.2)});
  node.port.postMessage({type: 'mark', name: 'short'});   // echoed once those 200 ms have played
  await sleep(700);
  const t1 = performance.now() - t0;
  node.port.postMessage({type: 'audio', pcm: tone(3)});
  node.port.postMessage({type: 'mark', name: 'long'});    // cut off by the clear: echoed at once, as Twilio does
  await sleep(500);
  const beforeClear = stats.played;
  node.port.postMessage({type: 'clear'});
  await sleep(400);
  const afterClear = stats;
  await sleep(300);
  const later = stats;
  await ctx.close();
  return {seen, t1, beforeClear, afterClear, later, rate: ctx.sampleRate};
}"""


def test_the_playback_buffer_echoes_marks_when_played_and_empties_on_clear(browser, phone):
    page = open_page(browser, phone, [])
    r = page.evaluate(PLAYBACK_PROBE)
    page.close()
    marks = dict(r["seen"])
    assert list(marks) == ["short", "long"], r
    assert 150 <= marks["short"] <= r["t1"], r  # after its 200 ms (less the first callback's slack), not at once
    assert marks["long"] < r["t1"] + 500 + 300, r  # on the clear, not after the 3 s before it
    # Nothing more is played after the clear: the 3 s tone stopped at once.
    assert r["afterClear"]["queuedMs"] == 0 and r["later"]["played"] == r["afterClear"]["played"], r
    assert r["afterClear"]["played"] - r["beforeClear"] < 0.25 * r["rate"], r


def test_the_page_and_its_scripts_are_served_from_the_package(phone):
    with httpx.Client(base_url=phone.server.url) as c:
        page = c.get("/softphone")
        scripts = [c.get(f"/softphone/{name}") for name in ("softphone.js", "worklet.js", "softphone.css")]
        missing = c.get("/softphone/../app.py")
        unknown = c.get("/softphone/secrets.txt")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in re.sub(r'href="/|src="/', "", page.text).replace("http-equiv", "")  # no CDN
    assert all(r.status_code == 200 for r in scripts)
    assert scripts[0].headers["content-type"].startswith("text/javascript")
    assert "registerProcessor" in scripts[1].text
    assert missing.status_code == 404 and unknown.status_code == 404


def test_an_unknown_softphone_file_gets_the_json_error_body(phone):
    with httpx.Client(base_url=phone.server.url) as c:
        r = c.get("/softphone/secrets.txt")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json", r.text
    assert r.json() == {"error": {"code": "not_found", "message": "softphone file not found", "status": 404,
                                  "details": []}}


# --- the route ------------------------------------------------------------------------------------------------------

def test_placing_a_softphone_call_returns_the_stream_and_event_socket(phone):
    with phone.client() as c:
        r = c.post(CALLS, json={"agent_id": phone.agent_id("demo")})
    assert r.status_code == 201, r.text
    body = r.json()
    ws_base = phone.server.url.replace("http://", "ws://")
    assert body["stream_url"] == ws_base + "/telephony/twilio/stream"
    assert body["parameters"]["call_id"] == body["call_id"] and body["parameters"]["token"]
    assert body["events_url"].startswith(f"{ws_base}/api/v1/softphone/calls/{body['call_id']}/events?token=")
    row = phone.server.call_row(body["call_id"])
    assert row["direction"] == "softphone" and row["status"] == "ringing" and row["ended_at"] is None
    assert row["to_number"] is None and row["from_number"] is None


def test_the_route_refuses_text_agents_other_workspaces_and_requests_without_a_key(phone):
    demo, text = phone.agent_id("demo"), phone.agent_id("chat-only")
    before = phone.softphone_calls()
    with phone.client() as c:
        text_agent = c.post(CALLS, json={"agent_id": text})
        unknown = c.post(CALLS, json={"agent_id": "0" * 32})
        extra = c.post(CALLS, json={"agent_id": demo, "to": "+15550100000"})
    with phone.client(phone.other_key) as c:
        other = c.post(CALLS, json={"agent_id": demo})
    with httpx.Client(base_url=phone.server.url) as c:
        no_key = c.post(CALLS, json={"agent_id": demo})
    assert text_agent.status_code == 400 and "text agent" in text_agent.json()["error"]["message"]
    assert text_agent.json()["error"]["details"][0]["field"] == "agent_id"
    assert (other.status_code, unknown.status_code) == (404, 404)
    assert other.json()["error"]["message"] == unknown.json()["error"]["message"] == "agent not found"
    assert no_key.status_code == 401 and extra.status_code == 400
    assert phone.softphone_calls() == before


# --- the stream and event sockets -----------------------------------------------------------------------------------

def run_async(coro):
    """Run a coroutine on a fresh loop in its own thread: Playwright's sync API holds this thread's loop while the
    module's browser is open."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _close_code(stream_url: str, parameters: dict, auth_token: str | None) -> int | None:
    """The code the server closed the stream with; 403 when it refused the upgrade itself."""
    caller = MediaStreamCaller(Answer(status_code=200, twiml="", stream_url=stream_url, parameters=parameters),
                               auth_token=auth_token)
    try:
        async with caller:
            await asyncio.wait_for(caller.closed.wait(), 10)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    return caller.close_code


def test_only_softphone_calls_stream_without_a_twilio_signature(phone):
    run_async(_only_softphone_calls_stream_unsigned(phone))


async def _only_softphone_calls_stream_unsigned(phone):
    server = phone.server
    answer = await post_incoming_call(server.url, DEMO_NUMBER, auth_token=AUTH_TOKEN)  # an inbound phone call
    call_id = answer.parameters["call_id"]
    assert await _close_code(server.stream_url, answer.parameters, auth_token=None) == 1008
    assert "missing X-Twilio-Signature (only softphone calls stream unsigned)" in server.log()
    row = server.call_row(call_id)
    assert row["stream_sid"] is None and row["ended_at"] is None  # refused before it could claim the call

    # A softphone call's upgrade with a *wrong* signature is refused too: only an absent one defers to the token.
    with phone.client() as c:
        placed = c.post(CALLS, json={"agent_id": phone.agent_id("demo")}).json()
    assert await _close_code(server.stream_url, placed["parameters"], auth_token="not-the-token") == 403
    assert server.call_row(placed["call_id"])["stream_sid"] is None
    # And a softphone call's token admits no other call's stream.
    assert await _close_code(server.stream_url, {"call_id": call_id, "token": placed["parameters"]["token"]},
                             auth_token=None) == 1008


async def _refused(url: str) -> bool:
    try:
        async with websockets.connect(url) as ws:
            await asyncio.wait_for(ws.recv(), 5)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code == 403
    except websockets.ConnectionClosed as exc:
        return exc.rcvd is not None and exc.rcvd.code == 1008
    return False


def test_the_event_socket_needs_the_calls_own_events_token(phone):
    run_async(_events_token_checks(phone))


async def _events_token_checks(phone):
    with phone.client() as c:
        first = c.post(CALLS, json={"agent_id": phone.agent_id("demo")}).json()
        second = c.post(CALLS, json={"agent_id": phone.agent_id("demo")}).json()
    base = first["events_url"].split("?token=")[0]
    other_token = second["events_url"].split("?token=")[1]
    assert await _refused(base)  # no token
    assert await _refused(base + "?token=abc.def")
    assert await _refused(base + "?token=" + other_token)  # another call's
    assert await _refused(base + "?token=" + first["parameters"]["token"])  # a stream token is not an events token
    assert await _refused(base + "?token=" + phone.key)  # nor is the API key
    # Its own token is admitted, and the socket stays open while the call is live.
    async with websockets.connect(first["events_url"]) as ws:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)
    assert "softphone events refused" in phone.server.log()


def test_a_call_whose_stream_never_opens_is_closed_and_its_listeners_told(phone):
    with phone.client() as c:
        placed = c.post(CALLS, json={"agent_id": phone.agent_id("demo")}).json()

    async def listen() -> dict:
        async with websockets.connect(placed["events_url"]) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), TOKEN_TTL_SECS + 15))

    ended = run_async(listen())
    assert ended["type"] == "ended" and ended["reason"] == "error_carrier", ended
    row = phone.server.call_row(placed["call_id"])
    assert row["status"] == "failed" and row["disconnection_reason"] == "error_carrier"
    assert row["error_detail"] == (f"the softphone never opened its media stream; its stream token expired after "
                                   f"{TOKEN_TTL_SECS} s")
