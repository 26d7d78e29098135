"""What the telephony routes refuse: bad signatures, unknown numbers, streams without a valid token."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import pytest
import websockets
from twilio.request_validator import RequestValidator

from runtime.tokens import StreamTokens
from telephony.twilio.caller import Answer, MediaStreamCaller, post_incoming_call
from tests.calls import dial
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, BROKEN_NUMBER, DEMO_NUMBER, TEXT_NUMBER

VOICE = "/telephony/twilio/voice"


def form(to: str = DEMO_NUMBER) -> dict[str, str]:
    return {"AccountSid": ACCOUNT_SID, "CallSid": "CA" + "9" * 32, "From": "+15550199999", "To": to, "CallerName": ""}


async def test_webhook_with_a_bad_signature_is_403(server):
    params = form()
    wrong = RequestValidator("not-the-token").compute_signature(server.url + VOICE, params)
    async with httpx.AsyncClient() as client:
        bad = await client.post(server.url + VOICE, data=params, headers={"X-Twilio-Signature": wrong})
        missing = await client.post(server.url + VOICE, data=params)
        # Signed for other parameters than those sent (e.g. a tampered To).
        tampered_sig = RequestValidator(AUTH_TOKEN).compute_signature(server.url + VOICE, form("+15550100001"))
        tampered = await client.post(server.url + VOICE, data=params, headers={"X-Twilio-Signature": tampered_sig})
    assert (bad.status_code, missing.status_code, tampered.status_code) == (403, 403, 403)
    assert "<Stream" not in bad.text
    assert "invalid or missing X-Twilio-Signature" in server.log()


async def test_blank_form_values_are_part_of_the_signature(server):
    # CallerName is blank: a parser that drops blank values would compute another signature and refuse.
    answer = await post_incoming_call(server.url, DEMO_NUMBER, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID)
    assert answer.status_code == 200 and answer.stream_url


async def test_unmapped_number_gets_hangup_twiml(server):
    answer = await post_incoming_call(server.url, "+15557770000", auth_token=AUTH_TOKEN)
    assert answer.status_code == 200
    assert answer.stream_url is None and answer.hangup
    assert "not in service" in " ".join(answer.said)
    assert "+15557770000: no agent is mapped to this number" in server.log()


async def test_garbage_to_number_gets_hangup_twiml(server):
    answer = await post_incoming_call(server.url, "not-a-number", auth_token=AUTH_TOKEN)
    assert answer.status_code == 200 and answer.stream_url is None and answer.hangup
    assert "bad To number" in server.log()


async def test_text_agent_refuses_phone_calls_and_the_call_is_recorded(server):
    answer = await post_incoming_call(server.url, TEXT_NUMBER, auth_token=AUTH_TOKEN, call_sid="CA" + "7" * 32)
    assert answer.stream_url is None and answer.hangup
    assert "cannot take phone calls" in " ".join(answer.said)
    row = server.query("SELECT * FROM calls WHERE twilio_call_sid = ?", "CA" + "7" * 32)[0]
    assert row["status"] == "failed" and row["disconnection_reason"] == "error_internal"
    assert "text" in row["error_detail"]


async def _start_with(server, parameters: dict) -> int | None:
    """Open a signed stream whose `start` carries these parameters; return the close code the server used."""
    answer = Answer(status_code=200, twiml="", stream_url=server.stream_url, parameters=parameters)
    caller = MediaStreamCaller(answer, auth_token=AUTH_TOKEN)
    async with caller:
        await asyncio.wait_for(caller.closed.wait(), 10)
    return caller.close_code


async def test_stream_without_a_valid_token_is_closed_with_policy_violation(server):
    answer = await post_incoming_call(server.url, DEMO_NUMBER, auth_token=AUTH_TOKEN)
    call_id = answer.parameters["call_id"]
    other = await post_incoming_call(server.url, DEMO_NUMBER, auth_token=AUTH_TOKEN)
    forged = StreamTokens("some-other-secret", 60).mint(call_id)
    cases = {
        "no token": {"call_id": call_id},
        "garbage token": {"call_id": call_id, "token": "abc.def.ghi"},
        "forged token": {"call_id": call_id, "token": forged},
        "token of another call": {"call_id": call_id, "token": other.parameters["token"]},
        "unknown call": {"call_id": "0" * 32, "token": StreamTokens("x", 60).mint("0" * 32)},
    }
    for name, params in cases.items():
        assert await _start_with(server, params) == 1008, name
    # The call whose token was tried by others is still answerable with its own token, once.
    assert await _start_with(server, {"call_id": call_id, "token": "tampered" + answer.parameters["token"]}) == 1008
    log = server.log()
    assert "stream token signature invalid" in log and "stream token is for another call" in log


async def test_a_token_admits_only_one_stream(server, speech):
    first = await dial(server)
    async with first:
        assert await first.wait_agent_audio(0.0, 20.0)
        assert await _start_with(server, first.answer.parameters) == 1008
    assert "already has a media stream" in server.log()


async def test_stream_upgrade_with_a_bad_signature_is_refused(server):
    headers = {"X-Twilio-Signature": RequestValidator("not-the-token").compute_signature(server.stream_url, {})}
    with pytest.raises((websockets.InvalidStatus, websockets.ConnectionClosed)) as refused:
        async with websockets.connect(server.stream_url, additional_headers=headers) as ws:
            await ws.recv()
    if isinstance(refused.value, websockets.InvalidStatus):
        assert refused.value.response.status_code == 403
    else:
        assert refused.value.rcvd.code == 1008


async def test_unbuildable_provider_ends_the_call_with_a_reason_naming_it(server):
    caller = await dial(server, BROKEN_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        await asyncio.wait_for(caller.closed.wait(), 10)
    row = server.wait_ended(call_id)
    assert row["status"] == "failed" and row["disconnection_reason"] == "error_stt"
    assert "DEEPGRAM_API_KEY is not set" in row["error_detail"]


async def test_health_reports_version_and_database(server):
    async with httpx.AsyncClient() as client:
        r = await client.get(server.url + "/health")
        ready = await client.get(server.url + "/ready")
    assert r.status_code == 200 and ready.status_code == 200, ready.text
    body = r.json()
    assert body["version"] and body["database"] == {"status": "ok", "dialect": "sqlite"}
    # No limit set: every new call is let in, and there is no count of room to give.
    assert (body["accepting_calls"], body["refusal"], body["room"]) == (True, None, None), body


def test_invalid_agent_file_is_reported_naming_the_field(server):
    assert "invalid.yaml" in server.log() and "transcriber.provider: unknown provider 'nosuch'" in server.log()


@pytest.mark.parametrize("secret", [AUTH_TOKEN])
def test_secrets_never_reach_the_log(server, secret):
    assert secret not in server.log()



def test_logged_tracebacks_carry_no_variable_values(capsys):
    # loguru's default "diagnose" tracebacks print each frame's local variables: keys and tokens included.
    from loguru import logger

    from runtime.logs import configure_logging

    configure_logging("INFO")

    def authenticate(secret: str) -> None:
        raise ValueError("bad key")

    key = "vxl_" + secrets.token_urlsafe(16)  # built at run time: the traceback's source lines cannot show it
    try:
        authenticate(key)
    except ValueError:
        logger.exception("auth failed")
    err = capsys.readouterr().err
    assert "auth failed" in err and "ValueError: bad key" in err
    assert key not in err
