"""Test helpers that place calls the way Twilio does, against the server fixture."""

from __future__ import annotations

import asyncio
import base64
import time

from telephony.audio import ulaw_rms
from telephony.twilio.caller import MediaStreamCaller, post_incoming_call, sid
from tests.conftest import ACCOUNT_SID, DEMO_NUMBER, Server


async def dial(server: Server, to: str = DEMO_NUMBER) -> MediaStreamCaller:
    """Webhook then media stream, both signed as Twilio signs them. Enter the result with `async with`."""
    call_sid = sid("CA")
    answer = await post_incoming_call(
        server.url, to, auth_token=server.auth_token, account_sid=ACCOUNT_SID, call_sid=call_sid,
        public_url=server.url,
    )
    assert answer.status_code == 200, answer.twiml
    assert answer.stream_url == server.stream_url, answer.twiml
    return MediaStreamCaller(answer, auth_token=server.auth_token, account_sid=ACCOUNT_SID, call_sid=call_sid)


def hung_up_by_rest(twilio_api, caller: MediaStreamCaller) -> bool:
    """Whether the server asked Twilio's REST API (the emulator) to end this call, and nothing else of it."""
    requests = twilio_api.wait_requests(caller.call_sid)
    asked = [(r["method"], r["form"]) for r in requests] == [("POST", {"Status": "completed"})]
    return asked and (twilio_api.call(caller.call_sid) or {}).get("status") == "completed"


async def converse(server: Server, utterance: bytes, to: str = DEMO_NUMBER) -> tuple[MediaStreamCaller, float, float]:
    """A full good call: welcome, one caller turn, the reply, hang-up. Returns (caller, end of speech, first reply)."""
    caller = await dial(server, to)
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0), "no welcome audio"
        assert await caller.wait_agent_quiet(0.8, 30.0)
        spoke_at = await caller.say(utterance)
        first = await caller.wait_agent_audio(spoke_at, 20.0)
        assert first is not None, "the agent did not answer"
        assert await caller.wait_agent_quiet(0.8, 30.0)
    return caller, spoke_at, first


def media_payloads(caller: MediaStreamCaller) -> list[bytes]:
    return [base64.b64decode(r.message["media"]["payload"], validate=True) for r in caller.events("media")]


def heard_secs(caller: MediaStreamCaller, after: float) -> float:
    """Seconds of agent audio that arrived after monotonic time `after` (8 kHz μ-law: a byte a sample)."""
    return sum(len(base64.b64decode(r.message["media"]["payload"])) for r in caller.events("media")
               if r.at > after) / 8000


def loud(ulaw: bytes) -> bool:
    return ulaw_rms(ulaw) > 300



async def apology_then_hang_up(caller: MediaStreamCaller, since: float, within: float,
                               what: str = "the caller heard nothing") -> tuple[float, float]:
    """A provider failure as the caller lives it: agent audio (the apology) within `within` s of `since`, then the
    server hangs up. (seconds from `since` to the hang-up, seconds of agent audio heard after `since`)."""
    assert await caller.wait_agent_audio(since, within) is not None, what
    await asyncio.wait_for(caller.closed.wait(), 30)  # the apology (about 5 s of speech) plays out first
    return time.monotonic() - since, heard_secs(caller, since)
