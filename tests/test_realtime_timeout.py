"""A Realtime server that takes the WebSocket (and answers pings) but sends no event while one is owed: the call
hears the apology and ends `failed`/`error_realtime` within the agent's `realtime.timeout_secs`, the way a dropped
socket does. Without the bound the caller would sit in silence until call.max_duration_secs (600 s).

Real sockets throughout: a websockets server that never speaks, a relay to the real Realtime emulator that stops
passing the server's events on after its VAD ends the caller's turn, a real voxline server and a caller on a real
Twilio media stream."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from config.agent import AgentConfig
from pipelines.providers import emulators
from tests.calls import apology_then_hang_up, dial
from tests.conftest import AUTH_TOKEN, create_key_with_cli, server_env, start_server, stop_server

TIMEOUT = 2.0  # the agents' realtime.timeout_secs: short, so a test waits little; production's default is 10 s
MUTE_NUMBER = "+15550100050"
RELAY_NUMBER = "+15550100051"
CLOSER_NUMBER = "+15550100052"
DETAIL = f"openai: openai realtime: no response within {TIMEOUT:g} s"


class Servers:
    """On one event loop in a thread: a Realtime server that accepts the handshake and then says nothing (pings
    are answered by the websockets library), and a relay to the Realtime emulator that passes everything both ways
    until it has passed on `input_audio_buffer.speech_stopped`, then drops what the server sends (a server that
    hangs mid-session). `connections` counts what each was asked."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.connections = {"mute": 0, "relay": 0, "closer": 0}
        self.muted_after_speech = 0
        self._emulator = self._run(emulators.start("openai-realtime"))
        self._mute = self._run(self._serve(self._silent))
        self._relay = self._run(self._serve(self._relayed))
        self._closer = self._run(self._serve(self._closing))
        self.mute_url = f"ws://127.0.0.1:{self._mute.sockets[0].getsockname()[1]}/v1/realtime"
        self.relay_url = f"ws://127.0.0.1:{self._relay.sockets[0].getsockname()[1]}/v1/realtime"
        self.closer_url = f"ws://127.0.0.1:{self._closer.sockets[0].getsockname()[1]}/v1/realtime"

    @staticmethod
    async def _serve(handler):
        return await serve(handler, "127.0.0.1", 0)  # serve() wants a running loop: made inside this one

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _silent(self, ws):
        self.connections["mute"] += 1
        await ws.wait_closed()

    async def _closing(self, ws):
        self.connections["closer"] += 1
        await ws.close(1000)  # a clean close while session.created is still due

    async def _relayed(self, ws):
        self.connections["relay"] += 1
        target = self._emulator.url.removesuffix("/v1/realtime") + ws.request.path
        headers = {"Authorization": ws.request.headers.get("Authorization", "")}
        async with connect(target, additional_headers=headers) as upstream:
            async def up():
                async for message in ws:
                    await upstream.send(message)

            async def down():
                muted = False
                async for message in upstream:
                    if not muted:
                        await ws.send(message)
                        if json.loads(message)["type"] == "input_audio_buffer.speech_stopped":
                            muted = True
                            self.muted_after_speech += 1

            tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()

    def close(self):
        async def _close():
            for server in (self._mute, self._relay, self._closer):
                server.close()
            await self._emulator.close()

        self._run(_close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def realtime_server(tmp_path_factory, twilio_api):
    servers = Servers()
    base = tmp_path_factory.mktemp("realtime-timeout")
    (base / "agents").mkdir()
    for name, number, url in (("mute", MUTE_NUMBER, servers.mute_url), ("relay", RELAY_NUMBER, servers.relay_url),
                              ("closer", CLOSER_NUMBER, servers.closer_url)):
        # The closer's welcome is uninterruptible: the caller's audio is held from the model until it has played,
        # so no failed send of that audio reveals the closed socket (pipecat would report that one itself).
        quiet = "interruption: {welcome_interruptible: false}" if name == "closer" else ""
        (base / "agents" / f"{name}.yaml").write_text(f"""
name: {name}-realtime
architecture: realtime
phone_numbers: ["{number}"]
system_prompt: A restaurant host.
welcome_message: Hello there.
realtime: {{provider: openai, voice: alloy, base_url: "{url}", timeout_secs: {TIMEOUT}}}
call: {{silence_timeout_secs: 0}}
{quiet}
""")
    env = {"TWILIO_API_BASE_URL": twilio_api.url, "OPENAI_API_KEY": "sk-test",
           "VOXLINE_PROVIDERS_ALLOW_PRIVATE_NETWORKS": "true"}  # the agents' own base URLs are on loopback
    server = start_server(base, auth_token=AUTH_TOKEN, extra_env=env)
    try:
        server.api_key = create_key_with_cli(server_env(base, env), "default", "admin")
        yield server, servers
    finally:
        stop_server(server)
        servers.close()


def test_realtime_timeout_secs_is_bounded():
    base = {"name": "a", "system_prompt": "p", "architecture": "realtime"}
    assert AgentConfig.model_validate({**base, "realtime": {"provider": "openai"}}).realtime.timeout_secs == 10.0
    for bad in (0, -1, 121):
        with pytest.raises(ValidationError, match="timeout_secs"):
            AgentConfig.model_validate({**base, "realtime": {"provider": "openai", "timeout_secs": bad}})


async def test_a_realtime_server_that_never_speaks_gets_the_apology_and_error_realtime(realtime_server):
    server, servers = realtime_server
    caller = await dial(server, MUTE_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        started = time.monotonic()
        # No session.created, so no welcome: the first audio is the apology, TIMEOUT after connecting.
        closed_after, heard = await apology_then_hang_up(caller, started, TIMEOUT + 8)
    row = server.wait_ended(call_id)
    assert servers.connections["mute"] >= 1, "the agent never connected to the server"
    assert (row["status"], row["disconnection_reason"]) == ("failed", "error_realtime"), dict(row)
    assert row["error_detail"] == DETAIL and row["ended_by"] == "system", dict(row)
    assert heard > 3.0, heard  # the apology, not a click
    assert closed_after < TIMEOUT + 15, closed_after


async def test_a_realtime_server_that_hangs_after_the_callers_turn_gets_the_apology(realtime_server, speech):
    server, servers = realtime_server
    caller = await dial(server, RELAY_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0), "no welcome"
        assert await caller.wait_agent_quiet(0.8, 30.0)
        # The caller thinking in silence owes the server nothing: no clock runs, the call stays up.
        await asyncio.sleep(TIMEOUT + 1.5)
        assert not caller.closed.is_set(), "the call ended while nothing was owed"
        spoke_at = await caller.say(speech["located"])
        closed_after, heard = await apology_then_hang_up(caller, spoke_at, TIMEOUT + 8,
                                                         "the caller heard nothing after speaking")
    row = server.wait_ended(call_id)
    assert servers.muted_after_speech >= 1, "the server's VAD never ended the caller's turn"
    assert (row["status"], row["disconnection_reason"]) == ("failed", "error_realtime"), dict(row)
    assert row["error_detail"] == DETAIL and row["ended_by"] == "system", dict(row)
    assert heard > 3.0, heard
    assert closed_after < TIMEOUT + 15, closed_after
    assert server.turns(call_id)[0]["text"] == "Hello there."


async def test_a_realtime_server_that_closes_cleanly_while_an_answer_is_due_gets_the_apology(realtime_server):
    server, servers = realtime_server
    caller = await dial(server, CLOSER_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        _, heard = await apology_then_hang_up(caller, 0.0, 10.0)
    row = server.wait_ended(call_id)
    assert servers.connections["closer"] >= 1, "the agent never connected to the server"
    assert (row["status"], row["disconnection_reason"]) == ("failed", "error_realtime"), dict(row)
    assert row["error_detail"] == ("openai: openai realtime: the server closed the connection (1000) while an "
                                   "answer was due"), dict(row)
    assert heard > 3.0, heard
