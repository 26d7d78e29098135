"""The browser softphone in Firefox: Debian's firefox-esr, headless, driven over its built-in Marionette protocol
(tests/firefox.py; no geckodriver). A call to the demo agent placed through the page connects, plays the agent's
audio through the page's AudioWorklet, shows the welcome in the panel, sends the fake microphone's audio, and hangs up.

Firefox's fake microphone is a tone, not speech, so the caller's words are not asserted (tests/test_softphone.py does
that in Chromium); the server's count of caller audio shows that capture, μ-law and sending work. With no sound
device Firefox never starts an AudioContext (its resume() never settles), so the call uses Firefox's mock audio
device (media.cubeb.force_mock_context: a real-time audio clock whose output is discarded); with no device at all
(media.cubeb.force_null_context) the page must say so rather than hang."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
import yaml

from tests.conftest import AUTH_TOKEN, ROOT, Server, create_key_with_cli, server_env, start_server, stop_server
from tests.firefox import FIREFOX, Firefox

ARTIFACTS = ROOT / "test-artifacts"
WELCOME = yaml.safe_load((ROOT / "config" / "agents" / "demo.yaml").read_text())["welcome_message"]
PREFS = {
    "media.navigator.streams.fake": True,  # a fake microphone (a tone)
    "media.navigator.permission.disabled": True,  # granted without a prompt
    "media.autoplay.default": 0,  # audio may play without a click on the page
    "media.cubeb.force_mock_context": True,  # an audio device where there is none (see above)
    # nothing fetched from the network
    "app.update.disabledForTesting": True, "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False, "toolkit.telemetry.enabled": False,
    "network.captive-portal-service.enabled": False, "network.connectivity-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False, "browser.safebrowsing.phishing.enabled": False,
    "extensions.update.enabled": False, "messaging-system.rsexperimentloader.enabled": False,
}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Server, str]:
    if FIREFOX is None:
        pytest.fail("firefox-esr is not installed: run ./dev test, which installs it")
    base = tmp_path_factory.mktemp("softphone-firefox")
    extra = {"VOXLINE_RATE_LIMIT_PER_MINUTE": "100000"}
    server = start_server(base, auth_token=AUTH_TOKEN, extra_env=extra)
    try:
        yield server, create_key_with_cli(server_env(base, extra), "default", "admin", "firefox test")
    finally:
        stop_server(server)
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(server.log_path, ARTIFACTS / "softphone-firefox-server.log")


@pytest.fixture
def firefox(tmp_path):
    opened: list[Firefox] = []

    def launch(**prefs) -> Firefox:
        ff = Firefox(tmp_path / f"profile{len(opened)}", {**PREFS, **prefs}, tmp_path / f"firefox{len(opened)}.log")
        opened.append(ff)
        return ff

    try:
        yield launch
    finally:
        for ff in opened:
            ff.close()
        for log in tmp_path.glob("firefox*.log"):
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(log, ARTIFACTS / f"softphone-{log.name}")


def page_state(ff: Firefox) -> dict:
    return ff.js("""return {softphone: window.softphone, status: document.getElementById('status').textContent,
                            error: document.getElementById('error').textContent,
                            transcript: document.getElementById('transcript').innerText}""")


def wait_js(ff: Firefox, expression: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ff.js(f"return !!({expression})"):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {expression}; page: {page_state(ff)}")
        time.sleep(0.1)


def open_page(ff: Firefox, server: Server, key: str) -> None:
    ff.navigate(server.url + "/softphone")
    ff.type("#api-key", key)
    ff.click("#load-agents")
    wait_js(ff, "!document.getElementById('call').disabled", 10)
    assert ff.js("return document.getElementById('agent').selectedOptions[0].textContent") == "demo"


def softphone_calls(server: Server) -> int:
    return server.query("SELECT COUNT(*) AS n FROM calls WHERE direction = 'softphone'")[0]["n"]


def test_a_call_from_firefox_plays_the_agent_shows_the_welcome_sends_the_microphone_and_hangs_up(firefox, served):
    server, key = served
    ff = firefox()
    open_page(ff, server, key)
    ff.click("#call")
    wait_js(ff, "window.softphone.state === 'live'", 15)
    assert ff.js("return document.getElementById('status').textContent") == "In call"
    call_id = ff.js("return window.softphone.callId")
    # The page is live once its `start` is sent; the server marks the call when it has read it.
    deadline = time.monotonic() + 5
    while server.call_row(call_id)["status"] != "in-progress" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.call_row(call_id)["status"] == "in-progress"

    # The welcome, heard through the page's jitter buffer and worklet, and shown in the panel once its mark came back.
    wait_js(ff, "[...document.querySelectorAll('#transcript .turn.assistant .text')]"
                f".some((e) => e.textContent === {WELCOME!r})", 20)
    rate = ff.js("return new AudioContext().sampleRate")
    wait_js(ff, f"window.softphone.stats.samplesPlayed > 2 * {rate} && window.softphone.stats.framesSent > 100", 10)
    stats = ff.js("return window.softphone.stats")
    assert stats["mediaReceived"] > 25 and stats["marksEchoed"] >= 1, stats  # over 2 s of 80 ms messages
    assert ff.js("return document.getElementById('error').hidden"), page_state(ff)
    ARTIFACTS.mkdir(exist_ok=True)
    ff.screenshot(ARTIFACTS / "softphone-firefox.png")

    ff.click("#hangup")
    wait_js(ff, "document.getElementById('status').textContent === 'Call ended: you hung up.'", 10)
    row = server.wait_ended(call_id, timeout=10)
    assert row["disconnection_reason"] == "caller_hangup" and row["status"] == "completed"
    assert row["direction"] == "softphone"
    with httpx.Client(base_url=server.url, headers={"x-api-key": key}, timeout=30) as c:
        record = c.get(f"/api/v1/calls/{call_id}").json()
    assert record["disconnection_reason"] == "caller_hangup", record
    # The server received the page's microphone (the fake tone), as 8 kHz μ-law: about one second per 50 frames.
    usage = record["usage"]
    assert usage["caller_audio_secs"] > 1 and usage["agent_audio_secs"] > 2, usage
    assert abs(usage["caller_audio_secs"] - stats["framesSent"] / 50) < 2, (usage, stats)
    assert server.turns(call_id)[0]["text"] == WELCOME


def test_without_an_audio_device_firefox_says_so_and_places_no_call(firefox, served):
    server, key = served
    ff = firefox(**{"media.cubeb.force_mock_context": False, "media.cubeb.force_null_context": True})
    open_page(ff, server, key)
    before = softphone_calls(server)
    ff.click("#call")
    wait_js(ff, "!document.getElementById('error').hidden", 15)
    state = page_state(ff)
    assert "no audio output device answered" in state["error"], state
    assert state["softphone"]["state"] == "idle" and state["status"] == "Idle", state
    assert softphone_calls(server) == before
