"""`voxline emulate twilio`: the Twilio REST emulator answers the real `twilio` client like Twilio does."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, ROOT, free_port, server_env


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    port = free_port()
    env = server_env(tmp_path_factory.mktemp("twilio-emu"), {"TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                                                             "TWILIO_AUTH_TOKEN": AUTH_TOKEN})
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "emulate", "twilio", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/_emulator/requests", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def client(url: str, token: str = AUTH_TOKEN) -> Client:
    c = Client(ACCOUNT_SID, token)
    c.api.base_url = url
    return c


def test_create_fetch_and_hang_up_a_call(emulator):
    c = client(emulator)
    call = c.calls.create(to="+15550100010", from_="+15550100000", twiml="<Response><Say>Hi</Say></Response>")
    assert call.sid.startswith("CA") and call.status == "queued" and call.to == "+15550100010"
    assert c.calls(call.sid).fetch().status == "queued"
    assert c.calls(call.sid).update(status="completed").status == "completed"
    with pytest.raises(TwilioRestException) as err:  # a finished call cannot be redirected
        c.calls(call.sid).update(twiml="<Response><Dial>+15550100099</Dial></Response>")
    assert err.value.status == 400 and err.value.code == 21220


def test_bad_credentials_and_bad_requests_are_refused_like_twilio(emulator):
    with pytest.raises(TwilioRestException) as err:
        client(emulator, "wrong-token").calls.create(to="+15550100010", from_="+15550100000", twiml="<Response/>")
    assert err.value.status == 401 and err.value.code == 20003
    with pytest.raises(TwilioRestException) as err:
        client(emulator).calls.create(to="+15550100010", from_="+15550100000")
    assert err.value.status == 400 and err.value.code == 21205
    with pytest.raises(TwilioRestException) as err:
        client(emulator).calls("CA" + "0" * 32).fetch()
    assert err.value.status == 404
