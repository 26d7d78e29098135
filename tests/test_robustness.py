"""What a real network sends: each bad input is logged and dropped (or, for an oversized frame, the socket is
closed), the server keeps serving, a good call running at the same time completes, and the bad call still ends
with a stored record and a reason."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
import websockets

from telephony.audio import SILENCE_ULAW
from tests.calls import converse, dial

MEDIA = {"event": "media", "media": {"payload": base64.b64encode(SILENCE_ULAW).decode()}}


def junk_after_start(caller) -> list[str | bytes]:
    sid = caller.stream_sid
    return {
        "malformed_json": ['{"event": "media", "media": {', "not json at all", "[1, 2, 3]", '{"no_event": 1}'],
        "unknown_event": [json.dumps({"event": "bogus", "streamSid": sid}), json.dumps({"event": 42})],
        "invalid_base64": [json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "!!not*base64!!"}}),
                           json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "QUJD="}}),
                           json.dumps({"event": "media", "streamSid": sid, "media": {"payload": 12}})],
        "binary_frames": [b"\x00\x01\x02" * 100, bytes(SILENCE_ULAW)],
        "second_start": [json.dumps(caller.start_message())],
    }


# (case, the log line that must appear)
SURVIVABLE = [
    ("malformed_json", "malformed JSON"),
    ("unknown_event", "unknown event"),
    ("invalid_base64", "invalid base64 payload"),
    ("binary_frames", "binary frame"),
    ("second_start", "second start"),
]


async def _good_call_completes(server, speech) -> None:
    caller, _, _ = await converse(server, speech["located"])
    call_id = caller.answer.parameters["call_id"]
    row = server.wait_ended(call_id)
    assert row["disconnection_reason"] == "caller_hangup"
    assert any("Main Street" in t["text"] for t in server.turns(call_id)), "the concurrent good call got no answer"


async def _healthy(server) -> None:
    async with httpx.AsyncClient() as client:
        assert (await client.get(server.url + "/health")).status_code == 200


@pytest.mark.parametrize("case,logged", SURVIVABLE, ids=[c for c, _ in SURVIVABLE])
async def test_bad_messages_are_dropped_and_the_call_goes_on(server, speech, case, logged):
    async def bad_call():
        caller = await dial(server)
        call_id = caller.answer.parameters["call_id"]
        async with caller:
            assert await caller.wait_agent_audio(0.0, 20.0)
            for raw in junk_after_start(caller)[case]:
                await caller.send_raw(raw)
            # Still a working call: the agent goes on speaking after the junk.
            junk_sent = caller.media_times[-1]
            assert await caller.wait_agent_audio(junk_sent, 10.0)
        row = server.wait_ended(call_id)
        assert row["disconnection_reason"] == "caller_hangup" and row["status"] == "completed"

    await asyncio.gather(bad_call(), _good_call_completes(server, speech))
    assert logged in server.log()
    await _healthy(server)


async def test_media_before_start_is_dropped(server, speech):
    async def bad_call():
        caller = await dial(server)
        caller._prelude = [json.dumps(MEDIA)] * 5 + ["garbage"]
        async with caller:
            assert await caller.wait_agent_audio(0.0, 20.0), "the stream was not admitted after its start"
        server.wait_ended(caller.answer.parameters["call_id"])

    await asyncio.gather(bad_call(), _good_call_completes(server, speech))
    assert "message before start" in server.log()
    await _healthy(server)


async def test_oversized_frame_closes_only_that_call(server, speech):
    async def bad_call():
        caller = await dial(server)
        call_id = caller.answer.parameters["call_id"]
        async with caller:
            assert await caller.wait_agent_audio(0.0, 20.0)
            try:
                await caller.send_raw(json.dumps({"event": "media", "media": {"payload": "A" * (1 << 20)}}))
            except websockets.ConnectionClosed as closed:
                # The server may refuse the frame from its header and close before the client's send returns:
                # websockets then raises here, with the server's 1009 when it read that close frame.
                assert closed.rcvd is None or closed.rcvd.code == 1009
            await asyncio.wait_for(caller.closed.wait(), 10)
        # The server closes with 1009 (message too big) while the client may still be writing the rest of its 1 MiB:
        # then the kernel resets the connection and the client never reads that close frame (1006, once in many
        # runs). What the server did is asserted below, from its own record and log.
        assert caller.close_code in (1009, 1006)
        row = server.wait_ended(call_id)
        assert row["status"] == "failed" and row["disconnection_reason"] == "error_carrier"
        assert "code 1009: message too big" in row["error_detail"]

    await asyncio.gather(bad_call(), _good_call_completes(server, speech))
    assert "code 1009: message too big" in server.log()
    await _healthy(server)


async def test_abrupt_disconnect_closes_the_record_within_5s(server, speech):
    async def bad_call():
        caller = await dial(server)
        call_id = caller.answer.parameters["call_id"]
        await caller.__aenter__()
        assert await caller.wait_agent_audio(0.0, 20.0)
        await caller.drop()
        row = server.wait_ended(call_id, timeout=5.0)
        assert row["status"] == "failed" and row["disconnection_reason"] == "error_carrier"
        assert "without a stop" in row["error_detail"]

    await asyncio.gather(bad_call(), _good_call_completes(server, speech))
    await _healthy(server)
