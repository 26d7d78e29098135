"""Call controls over the Twilio path: maximum duration, silence reminders then hang-up, keypad digits."""

from __future__ import annotations

import asyncio
import time

from tests.calls import dial
from tests.conftest import SHORT_CALL_NUMBER, SILENCE_NUMBER


async def test_max_duration_says_goodbye_and_hangs_up(server):
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
    turns = server.turns(call_id)
    assert turns[-1]["role"] == "assistant" and "Time is up" in turns[-1]["text"], [dict(t) for t in turns]


async def test_silence_gets_a_reminder_then_a_goodbye(server):
    caller = await dial(server, SILENCE_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        await asyncio.wait_for(caller.closed.wait(), 40)
    row = server.wait_ended(call_id)
    assert row["status"] == "completed" and row["disconnection_reason"] == "silence_timeout", dict(row)
    said = [t["text"] for t in server.turns(call_id) if t["role"] == "assistant"]
    assert said[0] == "Hello." and "Are you still there?" in said and said[-1] == "Goodbye for now.", said
    assert said.count("Are you still there?") == 1


async def test_keypad_digits_reach_the_llm(server):
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
    turns = [(t["role"], t["text"]) for t in server.turns(call_id)]
    assert ("user", "DTMF: 2#") in turns, turns
    assert ("assistant", "You pressed two.") in turns, turns
