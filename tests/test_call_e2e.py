"""End to end over real sockets, as Twilio drives a call: webhook → TwiML → media stream → pipeline → store."""

from __future__ import annotations

import asyncio
import re
import time

from telephony.audio import speech_bounds
from tests.calls import converse, dial, heard_secs, hung_up_by_rest, loud, media_payloads
from tests.conftest import LONG_WELCOME_NUMBER, STEADY_WELCOME_NUMBER


async def test_conversation_turn_is_heard_answered_and_stored(server, speech):
    logged_before = len(server.log())
    caller, spoke_at, first_reply = await converse(server, speech["located"])
    # Whisper started as the line fell silent after the words, before Silero heard the pause, and that run was used.
    assert "whisper: [Where are you located?] (started on the silence)" in server.log()[logged_before:]
    call_id = caller.answer.parameters["call_id"]

    # Welcome and reply arrive as valid μ-law media on our stream, with audible speech in them.
    media = caller.events("media")
    assert media, "no media from the agent"
    assert all(r.message["streamSid"] == caller.stream_sid for r in caller.received if "streamSid" in r.message)
    payloads = media_payloads(caller)
    assert sum(len(p) for p in payloads) > 8000 * 2, "less than 2 s of agent audio"
    assert loud(b"".join(payloads))
    # Paced at real time: the agent's audio is not pushed in one burst.
    span = media[-1].at - media[0].at
    assert span > 0.5 * sum(len(p) for p in payloads) / 8000 - 1.0

    row = server.wait_ended(call_id, timeout=5.0)
    assert row["status"] == "completed"
    assert row["disconnection_reason"] == "caller_hangup"
    # The caller's line was digitally silent while the welcome played and after the reply: those stretches reached
    # the pipeline in 1 s frames (tests/test_quiet_frames.py), and the turn above was heard all the same.
    # (The line is logged just after the record is stored, so it may be a moment behind the row.)
    pattern = rf"call {call_id}: ended .* media in/out (\d+)/\d+ \((\d+) read directly\), caller frames (\d+)"
    deadline = time.monotonic() + 5
    while not (ended := re.search(pattern, server.log())) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert ended, "no end-of-call line"
    media_in, direct, frames = map(int, ended.groups())
    assert frames < 0.8 * media_in / 2, (media_in, frames)
    # Every media message went from the socket's protocol straight to the serializer (telephony/audio_in.py),
    # those that came while the pipeline was being built too; none through the ASGI receive loop.
    assert direct == media_in > 0, (direct, media_in)
    assert row["stream_sid"] == caller.stream_sid
    assert row["twilio_call_sid"] == caller.call_sid
    assert row["direction"] == "inbound" and row["to_number"] == "+15550100000"

    turns = server.turns(call_id)
    roles = [t["role"] for t in turns]
    assert roles == ["assistant", "user", "assistant"], [dict(t) for t in turns]
    assert "Luigi" in turns[0]["text"]
    assert "located" in turns[1]["text"].lower()
    assert "Main Street" in turns[2]["text"]
    assert all(t["end_secs"] >= t["start_secs"] >= 0 for t in turns)
    assert turns[0]["end_secs"] <= turns[1]["start_secs"] <= turns[2]["start_secs"]
    assert not any(t["interrupted"] for t in turns)
    assert 0 < first_reply - spoke_at < 10
    # The reply carries its latency (caller fell silent → first agent audio sent), close to what the caller saw,
    # and the part each local service took; the welcome answered nobody, so it has none.
    reply = turns[2]
    assert turns[0]["latency_ms"] is None
    # (The caller's clock starts after the utterance's trailing silence, the server's at the end of speech.)
    assert abs(reply["latency_ms"] / 1000 - (first_reply - spoke_at)) < 0.8, (dict(reply), first_reply - spoke_at)
    assert all(reply[k] is not None and 0 <= reply[k] < reply["latency_ms"] for k in ("stt_ms", "llm_ms", "tts_ms"))


async def test_speaking_over_the_agent_clears_twilio_and_marks_the_turn_interrupted(server, speech):
    caller = await dial(server, LONG_WELCOME_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        await asyncio.sleep(4.0)  # past the welcome's first sentence (~2 s), into its second (~9 s)
        started = time.monotonic()
        spoke_at = await caller.say(speech["located"])
        assert await caller.wait_for(lambda: caller.events("clear"), 5.0), "no clear after barge-in"
        clear = caller.events("clear")[0]
        assert clear.message["streamSid"] == caller.stream_sid
        assert started < clear.at < spoke_at + 1.0
        # The agent stops talking: no welcome audio between the clear and the end of the caller's speech. Not up to
        # the utterance's last frame: its trailing quiet (~0.4 s) is time enough for the reply to start.
        speech_end = spoke_at - speech_bounds(speech["located"])[1]
        assert speech_end > clear.at + 0.5
        assert not [t for t in caller.media_times if clear.at + 0.2 < t < speech_end]
        reply_at = await caller.wait_agent_audio(spoke_at, 20.0)
        assert reply_at is not None, "no reply after the interruption"
        await caller.wait_agent_quiet(0.8, 30.0)
    server.wait_ended(call_id)
    turns = server.turns(call_id)
    assert turns[0]["role"] == "assistant" and turns[0]["interrupted"] == 1, [dict(t) for t in turns]
    # Only what was played before the interruption is kept: the first sentence, not the specials after it.
    assert turns[0]["text"] == "Hello and welcome to Luigi's.", turns[0]["text"]
    assert any(t["role"] == "user" and "located" in t["text"].lower() for t in turns)
    assert turns[-1]["role"] == "assistant" and "Main Street" in turns[-1]["text"] and not turns[-1]["interrupted"]
    assert len(caller.events("clear")) == 1
    # The turn started on the transcript, after the caller's pause; its silence still counted from the VAD's stop.
    assert "words in the caller's pause; a 0.10 s silence counts from the VAD's stop, not from them" in server.log()
    # The answer to an interruption is timed like any other: from the caller's silence to the agent's audio.
    assert 0 < turns[-1]["latency_ms"] / 1000 < reply_at - spoke_at + 0.8, dict(turns[-1])
    assert turns[-1]["llm_ms"] is not None and turns[-1]["tts_ms"] is not None


async def test_no_clear_when_the_agent_is_silent(server, speech):
    caller = await dial(server)
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        assert await caller.wait_agent_quiet(1.0, 30.0)
        spoke_at = await caller.say(speech["located"])
        assert await caller.wait_agent_audio(spoke_at, 20.0)
        await caller.wait_agent_quiet(0.8, 30.0)
    assert caller.events("clear") == []


async def test_goodbye_rule_ends_the_call_from_the_agent_side(server, speech, twilio_api):
    caller = await dial(server)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        assert await caller.wait_agent_quiet(0.8, 30.0)
        spoke_at = await caller.say(speech["goodbye"])
        assert await caller.wait_agent_audio(spoke_at, 20.0)
        # The server closes the socket after speaking the goodbye; TwiML's <Hangup/> then ends the call.
        await asyncio.wait_for(caller.closed.wait(), 20.0)
        closed_at = time.monotonic()
        goodbye_secs = heard_secs(caller, spoke_at)
        assert goodbye_secs > 1.5, f"the goodbye was cut short: {goodbye_secs:.2f} s"
    # The hang-up comes as the goodbye finishes playing: no 2 s of trailing silence sent in one message, and no
    # second spent waiting for it to play.
    assert max(len(p) for p in media_payloads(caller)) <= 1600
    assert -0.2 < closed_at - caller._playout_until < 1.0, closed_at - caller._playout_until
    assert caller.answer.hangup
    row = server.wait_ended(call_id)
    assert row["status"] == "completed" and row["disconnection_reason"] == "agent_hangup"
    assert row["ended_by"] == "agent" and hung_up_by_rest(twilio_api, caller)
    assert "Goodbye" in server.turns(call_id)[-1]["text"]


async def test_calls_run_concurrently(server, speech):
    results = await asyncio.gather(*(converse(server, speech["located"]) for _ in range(3)))
    for caller, _, _ in results:
        row = server.wait_ended(caller.answer.parameters["call_id"])
        assert row["disconnection_reason"] == "caller_hangup"
        assert any("Main Street" in t["text"] for t in server.turns(caller.answer.parameters["call_id"]))


async def test_an_uninterruptible_welcome_is_said_in_full(server, speech):
    caller = await dial(server, STEADY_WELCOME_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        await asyncio.sleep(1.5)
        await caller.say(speech["located"])  # talked over: not heard, not an interruption
        assert await caller.wait_agent_quiet(1.0, 30.0)
        welcome_secs = len(caller.agent_audio) / 8000
        spoke_at = await caller.say(speech["located"])  # once it is over, the caller is heard again
        assert await caller.wait_agent_audio(spoke_at, 20.0), "the caller was not heard after the welcome"
        await caller.wait_agent_quiet(0.8, 30.0)
    assert caller.events("clear") == []
    assert welcome_secs > 6.0, welcome_secs
    server.wait_ended(call_id)
    turns = server.turns(call_id)
    assert turns[0]["role"] == "assistant" and not turns[0]["interrupted"]
    assert turns[0]["text"].endswith("every day of the week."), turns[0]["text"]
    assert [t["role"] for t in turns].count("user") == 1, [dict(t) for t in turns]
    assert "Main Street" in turns[-1]["text"]


async def test_local_models_are_loaded_once_per_process(server, speech):
    await converse(server, speech["located"])  # at least one more call, whatever ran before
    log = server.log()
    for model in ("whisper", "piper", "silero"):
        assert log.count(f"loading local model {model!r}") == 1, model
    assert "Loading Silero VAD model" not in log  # pipecat's per-call ONNX session is never opened
