"""Call controls over the Twilio path: maximum duration, silence reminders then hang-up, keypad digits, and the\nLLM's end_call and transfer_call tools; each agent-side ending goes through Twilio's REST API (the emulator)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from tests.calls import dial, hung_up_by_rest, media_payloads
from tests.conftest import CALL_TOOLS_NUMBER, DEMO_NUMBER, SHORT_CALL_NUMBER, SILENCE_NUMBER, TRANSFER_TARGET


async def test_max_duration_says_goodbye_and_hangs_up(server, twilio_api):
    caller = await dial(server, SHORT_CALL_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        started = time.monotonic()
        await asyncio.wait_for(caller.closed.wait(), 30)
        lasted = time.monotonic() - started
    assert 6.0 <= lasted < 15.0, lasted
    assert any(t > started + 5.5 for t in caller.media_times), "no goodbye audio at the limit"
    row = server.wait_ended(call_id)
    assert row["status"] == "completed" and row["disconnection_reason"] == "max_duration"
    assert row["ended_by"] == "agent" and hung_up_by_rest(twilio_api, caller)
    turns = server.turns(call_id)
    assert turns[-1]["role"] == "assistant" and "Time is up" in turns[-1]["text"], [dict(t) for t in turns]


async def test_silence_gets_a_reminder_then_a_goodbye(server, twilio_api):
    caller = await dial(server, SILENCE_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        await asyncio.wait_for(caller.closed.wait(), 40)
    row = server.wait_ended(call_id)
    assert row["status"] == "completed" and row["disconnection_reason"] == "silence_timeout", dict(row)
    assert row["ended_by"] == "agent" and hung_up_by_rest(twilio_api, caller)
    said = [t["text"] for t in server.turns(call_id) if t["role"] == "assistant"]
    assert said[0] == "Hello." and "Are you still there?" in said and said[-1] == "Goodbye for now.", said
    assert said.count("Are you still there?") == 1


async def test_keypad_digits_reach_the_llm(server, twilio_api):
    caller = await dial(server, SILENCE_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        assert await caller.wait_agent_quiet(0.5, 20.0)
        for digit in ("2", "#"):
            await caller.send_json({"event": "dtmf", "streamSid": caller.stream_sid, "dtmf": {"digit": digit}})
        pressed = time.monotonic()
        assert await caller.wait_agent_audio(pressed, 10.0), "no answer to the keypad"
        await caller.wait_agent_quiet(0.5, 20.0)
    server.wait_ended(call_id)
    row = server.wait_ended(call_id)
    assert row["disconnection_reason"] == "caller_hangup" and row["ended_by"] == "caller"
    turns = [(t["role"], t["text"]) for t in server.turns(call_id)]
    assert ("user", "DTMF: 2#") in turns, turns
    assert ("assistant", "You pressed two.") in turns, turns
    assert twilio_api.requests(caller.call_sid) == []  # the caller hung up: nothing to tell Twilio


async def test_transfer_call_tool_moves_the_caller_with_a_dial(server, speech, twilio_api):
    caller = await dial(server, CALL_TOOLS_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        assert await caller.wait_agent_quiet(0.5, 20.0)
        spoke_at = await caller.say(speech["located"])
        assert await caller.wait_agent_audio(spoke_at, 20.0), "no transfer message"
        await asyncio.wait_for(caller.closed.wait(), 20)
        said_secs = sum(len(m) for m in media_payloads(caller)) / 8000
    row = server.wait_ended(call_id)
    assert row["disconnection_reason"] == "transfer" and row["ended_by"] == "agent", dict(row)
    assert TRANSFER_TARGET in row["error_detail"]
    requests = twilio_api.wait_requests(caller.call_sid)
    assert len(requests) == 1 and requests[0]["method"] == "POST", requests
    twiml = requests[0]["form"]["Twiml"]
    assert f"<Dial>{TRANSFER_TARGET}</Dial>" in twiml, twiml
    assert twilio_api.call(caller.call_sid)["twiml"] == twiml  # Twilio took it: the caller is being moved
    assert "Twilio" not in row["error_detail"]
    turns = server.turns(call_id)
    tool = [t for t in turns if t["role"] == "tool"]
    assert [t["tool_name"] for t in tool] == ["transfer_call"] and tool[0]["tool_error"] is None
    assert turns[-1]["role"] == "assistant" and turns[-1]["text"] == "Please hold while I transfer you."
    assert said_secs > 2.0  # the welcome and the whole transfer message were played


async def test_end_call_tool_hangs_up_through_twilio(server, speech, twilio_api):
    caller = await dial(server, CALL_TOOLS_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        assert await caller.wait_agent_quiet(0.5, 20.0)
        await caller.say(speech["table"])
        await asyncio.wait_for(caller.closed.wait(), 20)
    row = server.wait_ended(call_id)
    assert row["disconnection_reason"] == "agent_hangup" and row["ended_by"] == "agent", dict(row)
    assert "end_call tool: booking" in row["error_detail"]
    assert hung_up_by_rest(twilio_api, caller)
    tool = [t for t in server.turns(call_id) if t["role"] == "tool"]
    assert [(t["tool_name"], json.loads(t["tool_arguments"])) for t in tool] == [("end_call", {"reason": "booking"})]


def _carrier_call(twilio_api, server, to: str, callee: list[dict]) -> dict:
    """An inbound call placed by the emulated carrier itself, which runs the TwiML and the callee like Twilio."""
    placed = httpx.post(f"{twilio_api.url}/_emulator/inbound", timeout=30,
                        json={"to": to, "from": "+15550199999", "server": server.url, "callee": callee})
    assert placed.status_code == 201, placed.text
    return httpx.get(f"{twilio_api.url}/_emulator/calls/{placed.json()['sid']}", params={"wait": 60}, timeout=70).json()


async def test_the_carrier_hears_of_a_transfer_before_the_stream_closes(server, twilio_api):
    # Closing the stream first would make Twilio run the TwiML's <Hangup/>: the caller would be hung up on.
    call = await asyncio.to_thread(_carrier_call, twilio_api, server, CALL_TOOLS_NUMBER,
                                   [{"wait_agent": 20}, {"say": "Where are you located?"}, {"wait_agent": 20}])
    assert call["transfer_to"] == TRANSFER_TARGET and call["hung_up_by"] == "transfer", call


async def test_the_carrier_hears_of_an_agent_hang_up_before_the_stream_closes(server, twilio_api):
    call = await asyncio.to_thread(_carrier_call, twilio_api, server, DEMO_NUMBER,
                                   [{"wait_agent": 20}, {"say": "Goodbye."}, {"wait_agent": 20}])
    assert call["hung_up_by"] == "rest" and call["status"] == "completed", call
    call_id = server.query("SELECT id FROM calls WHERE twilio_call_sid = ?", call["sid"])[0]["id"]
    row = server.wait_ended(call_id)  # Twilio heard first; the record closes as the stream does, just after
    assert row["disconnection_reason"] == "agent_hangup" and row["error_detail"] == "goodbye rule", dict(row)
