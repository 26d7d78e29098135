"""Calls and chats through the cloud providers' real clients, pointed at the local emulators (their real wire
protocols): a pipeline agent on Deepgram + OpenAI + Cartesia with an HTTP tool, a realtime agent on OpenAI Realtime
with μ-law in and out, a text chat on OpenAI with the same tool, and what the caller hears when a provider fails."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import httpx
import pytest

from pipelines.architectures.realtime import welcome_instruction
from pipelines.providers import emulators
from tests.calls import apology_then_hang_up, dial, hung_up_by_rest
from tests.conftest import AUTH_TOKEN, ROOT, create_key_with_cli, server_env, start_server, stop_server
from tests.tool_server import ToolServer

CLOUD_NUMBER = "+15550100020"
REALTIME_NUMBER = "+15550100021"
STEADY_REALTIME_NUMBER = "+15550100022"
LONG_CLOUD_NUMBER = "+15550100023"
STEADY_WELCOME = "Hello, this is Luigi's. Our kitchen is open from noon until eleven at night, every day of the week."
LONG_WELCOME = STEADY_WELCOME + " We serve pizza, pasta and salads, and on Sundays a brunch with eggs and pancakes."

OPENAI_RULES = {"rules": [
    {"keywords": ["located", "where"], "tool_call": {"name": "find_us", "arguments": {"say": "twelve Main Street"}},
     "after_tool": "We are at twelve Main Street, next to the old cinema."},  # said once the tool has answered
    {"keywords": ["table", "book"], "fault": "server_error"},
]}
REALTIME_RULES = {"rules": [
    {"keywords": ["located", "where"], "tool_call": {"name": "find_us", "arguments": {"say": "twelve Main Street"}},
     "after_tool": "We are at {result}."},
    {"keywords": ["keypad"], "reply": "You chose option two."},
    {"keywords": ["table", "book"], "fault": "drop_stream"},
]}

AGENTS = {
    "cloud.yaml": f"""
name: cloud
phone_numbers: ["{CLOUD_NUMBER}"]
system_prompt: A restaurant host.
welcome_message: Hello, this is Luigi's.
transcriber: {{provider: deepgram, model: nova-3}}
llm: {{provider: openai, model: gpt-4o-mini}}
tts: {{provider: cartesia}}
call: {{silence_timeout_secs: 0}}
""",
    "cloud_long.yaml": f"""
name: cloud-long
phone_numbers: ["{LONG_CLOUD_NUMBER}"]
system_prompt: A restaurant host.
welcome_message: {LONG_WELCOME}
transcriber: {{provider: deepgram, model: nova-3}}
llm: {{provider: openai, model: gpt-4o-mini}}
tts: {{provider: cartesia}}
call: {{silence_timeout_secs: 0}}
""",
    "realtime.yaml": f"""
name: realtime
architecture: realtime
phone_numbers: ["{REALTIME_NUMBER}"]
system_prompt: A restaurant host.
welcome_message: Hello, this is Luigi's.
realtime: {{provider: openai, voice: alloy}}
call: {{silence_timeout_secs: 0}}
""",
    "steady_realtime.yaml": f"""
name: steady-realtime
architecture: realtime
phone_numbers: ["{STEADY_REALTIME_NUMBER}"]
system_prompt: A restaurant host.
welcome_message: {STEADY_WELCOME}
realtime: {{provider: openai, voice: alloy}}
interruption: {{welcome_interruptible: false}}
call: {{silence_timeout_secs: 0}}
""",
}


class Emulators:
    """The four provider emulators on one event loop in a background thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.running = {}

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def start(self):
        for name, rules in (("deepgram", None), ("openai", OPENAI_RULES), ("cartesia", None),
                            ("openai-realtime", REALTIME_RULES)):
            parsed = emulators.Rules.parse(rules) if rules else None
            self.running[name] = self.run(emulators.start(name, rules=parsed))

    def close(self):
        for running in self.running.values():
            self.run(running.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, twilio_api):
    emu = Emulators()
    emu.start()
    tools = ToolServer().__enter__()
    base = tmp_path_factory.mktemp("cloud")
    (base / "agents").mkdir()
    for name, text in AGENTS.items():
        (base / "agents" / name).write_text(text)
    env = {
        "TWILIO_API_BASE_URL": twilio_api.url, "VOXLINE_TOOLS_ALLOW_PRIVATE_NETWORKS": "true",
        "DEEPGRAM_API_KEY": "dg-test", "OPENAI_API_KEY": "sk-test", "CARTESIA_API_KEY": "sk_car_test",
        "VOXLINE_DEEPGRAM_BASE_URL": emu.running["deepgram"].url,
        "VOXLINE_OPENAI_BASE_URL": emu.running["openai"].url,
        "VOXLINE_CARTESIA_URL": emu.running["cartesia"].url,
        "VOXLINE_OPENAI_REALTIME_URL": emu.running["openai-realtime"].url,
        # What the calls leave for the cyclic collector (test_calls_leave_no_garbage...): bench/gc_watch's record.
        "GC_WATCH_OUT": str(base / "gc_watch"), "GC_WATCH_GARBAGE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "bench" / "gc_watch"), os.environ.get("PYTHONPATH")])),
    }
    server = start_server(base, auth_token=AUTH_TOKEN, extra_env=env)
    try:
        key = _attach_tool(server, base, env, tools)
    except BaseException:
        stop_server(server)  # a failed setup must not leave the server process behind
        raise
    server.api_key = key
    yield server, emu, tools
    stop_server(server)
    tools.__exit__(None, None, None)
    emu.close()


def _attach_tool(server, base, env, tools) -> str:
    """The cloud and realtime agents get an HTTP tool through the API, the way users attach one."""
    key = create_key_with_cli(server_env(base, env), "default", "admin")
    with httpx.Client(base_url=server.url, headers={"x-api-key": key}) as c:
        agents = {a["name"]: a for a in c.get("/api/v1/agents").json()["data"]}
        tool = c.post("/api/v1/tool-endpoint-defs", json={
            "name": "find_us", "description": "Where the restaurant is", "url": f"{tools.url}/text", "method": "GET",
            "parameters": {"type": "object", "properties": {"say": {"type": "string"}}, "required": ["say"]},
        })
        assert tool.status_code in (200, 201), tool.text
        for name in ("cloud", "realtime"):
            attach = c.post(f"/api/v1/agents/{agents[name]['id']}/tools", json=[{"tool_id": tool.json()["id"]}])
            assert attach.status_code in (200, 201), attach.text
    return key


async def test_a_pipeline_call_through_deepgram_openai_and_cartesia_with_a_tool(cloud, speech):
    server, emu, tools = cloud
    asked = emu.running["openai"].emulator.requests
    before = len(asked)
    synthesized = emu.running["cartesia"].emulator
    synthesized_before = len(synthesized)
    caller = await dial(server, CLOUD_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0), "no welcome from Cartesia"
        assert await caller.wait_agent_quiet(0.8, 30.0)
        spoke_at = await caller.say(speech["located"])
        assert await caller.wait_agent_audio(spoke_at, 20.0), "no reply"
        await caller.wait_agent_quiet(0.8, 30.0)
    row = server.wait_ended(call_id)
    assert row["disconnection_reason"] == "caller_hangup", dict(row)
    turns = server.turns(call_id)
    roles = [t["role"] for t in turns]
    assert roles[:2] == ["assistant", "user"] and "tool" in roles, [dict(t) for t in turns]
    assert turns[0]["text"] == "Hello, this is Luigi's."
    assert "located" in turns[1]["text"].lower()  # Deepgram's transcript (the emulator's Whisper)
    tool = next(t for t in turns if t["role"] == "tool")
    assert tool["tool_name"] == "find_us" and json.loads(tool["tool_arguments"]) == {"say": "twelve Main Street"}
    assert tool["tool_error"] is None and "twelve Main Street" in tool["tool_result"]
    assert any(r["query"] == {"say": "twelve Main Street"} for r in tools.requests)
    # The model is told the agent's prompt and nothing else: no guidance pipecat composes for tools it would run
    # asynchronously (end_call is offered too, and is not one of those).
    assert len(asked) - before == 2
    for request in asked[before:]:
        assert [m for m in request["messages"] if m["role"] in ("system", "developer")] == [
            {"role": "system", "content": "A restaurant host."}], request["messages"]
        assert [t["function"]["name"] for t in request["tools"]] == ["find_us", "end_call"]
    assert turns[-1]["role"] == "assistant" and "twelve Main Street" in turns[-1]["text"]
    # The reply's first clause went to Cartesia alone, the rest of its sentence after it in the same context.
    sent = [r for r in synthesized[synthesized_before:] if r["transcript"].strip()]
    first = next(i for i, r in enumerate(sent) if r["transcript"].strip().startswith("We are at"))
    assert sent[first]["transcript"].strip() == "We are at twelve Main Street,", sent
    assert sent[first + 1]["transcript"].strip() == "next to the old cinema.", sent
    assert sent[first + 1]["context_id"] == sent[first]["context_id"] and sent[first]["continue"], sent
    # What it used and cost, priced from config/prices.yaml: Deepgram minutes of the whole stream, OpenAI tokens
    # (two requests: the tool call and the answer), Cartesia characters, Twilio minutes.
    record = httpx.get(f"{server.url}/api/v1/calls/{call_id}", headers={"x-api-key": server.api_key}).json()
    usage, cost = record["usage"], record["cost"]
    assert usage["stt_secs"] > 0.8 * usage["caller_audio_secs"] > 2, usage  # a streaming STT hears it all
    assert usage["llm_tokens_in"] > 0 and usage["llm_tokens_out"] > 0, usage
    said = "".join(t["text"] for t in turns if t["role"] == "assistant")
    assert usage["tts_characters"] >= len(said.replace(" ", "")), usage
    assert cost["unpriced"] == [] and all(cost["components"][k] > 0 for k in ("stt", "llm", "tts", "carrier")), cost
    assert abs(cost["total"] - sum(cost["components"].values())) < 1e-5


async def test_stop_over_a_deepgram_agent_interrupts_it(cloud, speech):
    """Barge-in on the production STT path: the caller listens quietly for 4 s (Deepgram then gets the line in
    batches), says "Please stop." over the welcome: one `clear`, the welcome is cut and marked interrupted, and
    Deepgram's transcript of the caller's words (from their onset) decides it."""
    server, emu, _ = cloud
    caller = await dial(server, LONG_CLOUD_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        # 3 s of the ~10 s welcome heard (the emulator's Piper can pause between sentences, so not a fixed time).
        assert await caller.wait_for(lambda: len(caller.agent_audio) >= 3 * 8000, 30.0), "no welcome from Cartesia"
        spoke_at = await caller.say(speech["stop"])
        # Either way the agent speaks again: the rest of its welcome, or its answer to the interruption.
        assert await caller.wait_agent_audio(spoke_at + 0.2, 20.0), "the agent stayed silent"
        await caller.wait_agent_quiet(1.0, 30.0)
    server.wait_ended(call_id)
    turns = server.turns(call_id)
    assert len(caller.events("clear")) == 1
    assert turns[0]["role"] == "assistant" and turns[0]["interrupted"], [dict(t) for t in turns]
    assert not turns[0]["text"].endswith("pancakes."), turns[0]["text"]
    assert any(t["role"] == "user" and "stop" in t["text"].lower() for t in turns), [dict(t) for t in turns]
    # The quiet line went to Deepgram in fewer messages than the caller's 40 ms frames, and all of it arrived.
    stream = emu.running["deepgram"].emulator[-1]
    record = httpx.get(f"{server.url}/api/v1/calls/{call_id}", headers={"x-api-key": server.api_key}).json()
    frames = record["usage"]["stt_secs"] / 0.04
    assert stream.messages < 0.6 * frames, (stream, frames)
    assert stream.bytes >= 0.95 * record["usage"]["stt_secs"] * 16000, (stream, record["usage"])


async def test_an_llm_failure_gets_an_apology_and_ends_the_call_naming_the_provider(cloud, speech, twilio_api):
    server, _, _ = cloud
    caller = await dial(server, CLOUD_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        assert await caller.wait_agent_quiet(0.8, 30.0)
        spoke_at = await caller.say(speech["table"])  # the OpenAI emulator answers this with 500s
        _, apology_secs = await apology_then_hang_up(caller, spoke_at, 30.0, "no apology")
    row = server.wait_ended(call_id)
    assert row["status"] == "failed" and row["disconnection_reason"] == "error_llm", dict(row)
    assert row["error_detail"].startswith("openai:") and row["ended_by"] == "system"
    assert apology_secs > 2.0, apology_secs
    assert hung_up_by_rest(twilio_api, caller)
    turns = server.turns(call_id)  # what was said before the failure is kept
    assert turns[0]["text"] == "Hello, this is Luigi's." and any("table" in t["text"].lower() for t in turns)


async def test_a_realtime_call_is_mulaw_end_to_end_and_runs_a_tool(cloud, speech):
    server, emu, _ = cloud
    caller = await dial(server, REALTIME_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0), "no welcome"
        assert await caller.wait_agent_quiet(0.8, 30.0)
        spoke_at = await caller.say(speech["located"])
        assert await caller.wait_agent_audio(spoke_at, 20.0), "no reply"
        await caller.wait_agent_quiet(0.8, 30.0)
    row = server.wait_ended(call_id)
    assert row["disconnection_reason"] == "caller_hangup", dict(row)
    session = emu.running["openai-realtime"].emulator[-1]
    assert session["audio"]["input"]["format"]["type"] == "audio/pcmu"
    assert session["audio"]["output"]["format"]["type"] == "audio/pcmu"
    assert session["instructions"] == "A restaurant host."  # the agent's prompt, with nothing pipecat composes
    turns = [(t["role"], t["text"]) for t in server.turns(call_id)]
    assert turns[0] == ("assistant", "Hello, this is Luigi's."), turns
    assert any(role == "user" and "located" in text.lower() for role, text in turns), turns
    assert turns[-1][0] == "assistant" and "twelve Main Street" in turns[-1][1], turns  # said after the tool ran
    assert welcome_instruction("x") not in json.dumps(turns)
    tool = [t for t in server.turns(call_id) if t["role"] == "tool"]
    assert [t["tool_name"] for t in tool] == ["find_us"] and "twelve Main Street" in tool[0]["tool_result"]


async def test_a_realtime_socket_drop_gets_an_apology_and_error_realtime(cloud, speech):
    server, _, _ = cloud
    caller = await dial(server, REALTIME_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        assert await caller.wait_agent_quiet(0.8, 30.0)
        spoke_at = await caller.say(speech["table"])  # the Realtime emulator drops its socket on this
        await apology_then_hang_up(caller, spoke_at, 30.0, "no apology")
    row = server.wait_ended(call_id)
    assert row["disconnection_reason"] == "error_realtime", dict(row)
    assert row["error_detail"].startswith("openai:")
    assert server.turns(call_id)[0]["text"] == "Hello, this is Luigi's."


def test_a_text_chat_through_openai_runs_the_tool_and_streams_the_answer(cloud):
    server, _, _ = cloud
    with httpx.Client(base_url=server.url, headers={"x-api-key": server.api_key}, timeout=30) as c:
        agent = next(a for a in c.get("/api/v1/agents").json()["data"] if a["name"] == "cloud")
        session = c.post("/api/v1/chat/sessions", json={"agent_id": agent["id"]}).json()
        events = []
        with c.stream("POST", "/api/v1/chat/turn", json={"session_id": session["id"],
                                                          "message": "Where are you located?"}) as r:
            assert r.status_code == 200
            name = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
        kinds = [k for k, _ in events]
        assert kinds[0] == "tool_executing" and "tool_done" in kinds and kinds[-1] == "done", events
        assert kinds.index("tool_done") < kinds.index("message_delta")
        reply = "".join(d.get("delta", d.get("text", "")) for k, d in events if k == "message_delta")
        assert "twelve Main Street" in reply, events
        history = c.get(f"/api/v1/chat/sessions/{session['id']}").json()
        assert [m["role"] for m in history["messages"]] == ["user", "tool", "assistant"], history


def test_chat_turns_reuse_the_servers_connection_to_the_llm(cloud):
    """Each chat turn builds its own LLM service, as each call does; they share the server's connections, so a turn
    (a call's first) does not wait for a DNS lookup and the TCP and TLS handshakes before its request leaves."""
    server, emu, _ = cloud
    chat = emu.running["openai"].emulator
    before = len(chat.peers)
    with httpx.Client(base_url=server.url, headers={"x-api-key": server.api_key}, timeout=30) as c:
        agent = next(a for a in c.get("/api/v1/agents").json()["data"] if a["name"] == "cloud")
        for _ in range(3):
            session = c.post("/api/v1/chat/sessions", json={"agent_id": agent["id"]}).json()
            with c.stream("POST", "/api/v1/chat/turn", json={"session_id": session["id"], "message": "Hello"}) as r:
                assert r.status_code == 200
                lines = list(r.iter_lines())
            assert "event: done" in lines, lines
    peers = chat.peers[before:]
    assert len(peers) == 3 and len(set(peers)) == 1, peers


async def test_keypad_digits_reach_a_realtime_model(cloud):
    server, emu, _ = cloud
    caller = await dial(server, REALTIME_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0), "no welcome"
        assert await caller.wait_agent_quiet(0.8, 30.0)
        pressed_at = time.monotonic()
        for digit in "2#":
            await caller.send_json({"event": "dtmf", "streamSid": caller.stream_sid, "dtmf": {"digit": digit}})
        assert await caller.wait_agent_audio(pressed_at, 20.0), "the model did not answer the keys"
        await caller.wait_agent_quiet(0.8, 30.0)
    server.wait_ended(call_id)
    turns = [(t["role"], t["text"]) for t in server.turns(call_id)]
    assert ("user", "DTMF: 2#") in turns, turns
    assert turns[-1] == ("assistant", "You chose option two."), turns


async def test_an_uninterruptible_welcome_on_a_realtime_model_is_said_in_full(cloud, speech):
    server, _, _ = cloud
    caller = await dial(server, STEADY_REALTIME_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0)
        await asyncio.sleep(1.0)
        await caller.say(speech["located"])  # over the welcome: the model never hears it
        assert await caller.wait_agent_quiet(1.0, 30.0)
        spoke_at = await caller.say(speech["located"])  # once it is over, the caller is heard again
        assert await caller.wait_agent_audio(spoke_at, 20.0), "the caller was not heard after the welcome"
        await caller.wait_agent_quiet(0.8, 30.0)
    assert caller.events("clear") == []
    server.wait_ended(call_id)
    turns = server.turns(call_id)
    assert turns[0]["role"] == "assistant" and turns[0]["text"] == STEADY_WELCOME and not turns[0]["interrupted"]
    assert [t["role"] for t in turns].count("user") == 1, [dict(t) for t in turns]



CALL_PACKAGES = {"runtime", "pipelines", "telephony", "pipecat", "deepgram", "openai", "websockets", "starlette",
                 "uvicorn", "_asyncio"}


def _gc_watch(server, *, writes_after: int = 0, timeout: float = 30.0) -> dict:
    """bench/gc_watch's latest record of the server, once it has written past `writes_after` with every pipeline
    made so far freed (a call's is freed as its session ends, just after its row is)."""
    path, deadline = server.data_dir.parent / "gc_watch", time.monotonic() + timeout
    while True:
        written = [json.loads(f.read_text()) for f in path.glob("*.json")]
        state = next((w for w in written if "serve" in w["argv"]), None)
        if state and state["writes"] > writes_after:
            made, p = state["pipelines"]["made"], state["pipelines"]
            if made == p["by_refcount"] + p["by_collector"]:
                return state
        assert time.monotonic() < deadline, f"gc_watch: no record with every pipeline freed: {state}"
        time.sleep(0.2)


async def test_calls_and_chats_leave_nothing_for_the_cyclic_collector(cloud, speech):
    """A pipeline call, a realtime call and a chat turn end with everything they made freed by reference counting
    (runtime/call_teardown.py and the cycles broken where they are made): no full collection is needed to free
    a call, so collecting rarely costs no memory. The server runs under bench/gc_watch, whose collection every 2 s
    keeps and records what it finds unreachable."""
    server, _, _ = cloud
    before = _gc_watch(server)
    for number in (CLOUD_NUMBER, REALTIME_NUMBER):
        caller = await dial(server, number)
        async with caller:
            assert await caller.wait_agent_audio(0.0, 20.0), number
            assert await caller.wait_agent_quiet(0.8, 30.0), number
            spoke_at = await caller.say(speech["located"])
            assert await caller.wait_agent_audio(spoke_at, 20.0), number
            await caller.wait_agent_quiet(0.8, 30.0)
        server.wait_ended(caller.answer.parameters["call_id"])
    with httpx.Client(base_url=server.url, headers={"x-api-key": server.api_key}, timeout=30) as c:
        agent = next(a for a in c.get("/api/v1/agents").json()["data"] if a["name"] == "cloud")
        session = c.post("/api/v1/chat/sessions", json={"agent_id": agent["id"]}).json()
        with c.stream("POST", "/api/v1/chat/turn", json={"session_id": session["id"], "message": "Hello"}) as r:
            assert "event: done" in list(r.iter_lines())
    after = _gc_watch(server, writes_after=before["writes"] + 1)  # a whole collection after the last one ended
    assert after["pipelines"]["made"] >= before["pipelines"]["made"] + 3, after["pipelines"]
    assert after["pipelines"]["by_collector"] == before["pipelines"]["by_collector"], after["pipelines"]
    found = {kind: n - before["garbage"].get(kind, 0) for kind, n in after["garbage"].items()
             if n > before["garbage"].get(kind, 0)}
    cycles = {c: n for c, n in after["cycles"].items() if n > before["cycles"].get(c, 0)}
    # What may be found is the libraries' own small cycles: every httpx response and its bound stream refer to
    # each other (httpx 0.29; here the tools' requests, with the request's plumbing hanging off them), and some
    # SQLAlchemy expressions and their comparators. None of the call's own objects.
    assert not [kind for kind in found if kind.split(".")[0] in CALL_PACKAGES], (found, cycles)
