"""An OpenAI-compatible server that accepts the request and then says nothing, or stops in the middle of a reply:
the turn fails within the agent's `llm.timeout_secs`, like any other LLM outage. A phone call hears the apology and
ends `failed`/`error_llm`; a chat turn ends in an `error` event, and the session takes the next turn. Real listeners
on loopback, a real server, a caller on a real media stream."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from pydantic import ValidationError

from config.agent import AgentConfig
from tests.api_helpers import chat_turn
from tests.calls import apology_then_hang_up, dial
from tests.conftest import AUTH_TOKEN, create_key_with_cli, server_env, start_server, stop_server

TIMEOUT = 2.0  # the agents' llm.timeout_secs: short, so a test waits little; production's default is 10 s
SILENT_NUMBER = "+15550100040"
STALLING_NUMBER = "+15550100041"
NO_RESPONSE = f"Error during completion: no response within {TIMEOUT:g} s"
STALLED = f"Error during completion: the reply stalled: nothing for {TIMEOUT:g} s"
FIRST_CHUNK = {"id": "chatcmpl-stall", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me see."},
                            "finish_reason": None}]}


class Listener:
    """A TCP server on loopback, in a thread. `silent` accepts a connection and never sends a byte (a hung or
    overloaded LLM server); `stalling` reads the request, answers 200 with the first SSE chunk of a reply, then
    sends nothing more. Both hold their connections open until closed. `requests` counts what they were sent."""

    def __init__(self, mode: str):
        self.mode, self.requests, self._conns = mode, 0, []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket):
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests += 1
            if self.mode == "stalling":
                head, body = data.split(b"\r\n\r\n", 1)
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n"
                             + b"data: " + json.dumps(FIRST_CHUNK).encode() + b"\n\n")
            self._stop.wait()  # and nothing more, until the test ends
        except OSError:
            pass

    def close(self):
        self._stop.set()
        self._sock.close()
        for conn in self._conns:
            conn.close()
        self._thread.join(5)


def _agents(silent: Listener, stalling: Listener) -> dict[str, str]:
    agents = {}
    for name, number, url in (("silent", SILENT_NUMBER, silent.url), ("stalling", STALLING_NUMBER, stalling.url)):
        llm = f'{{provider: openai, model: m, base_url: "{url}", timeout_secs: {TIMEOUT}}}'
        agents[f"{name}.yaml"] = f"""
name: {name}-llm
phone_numbers: ["{number}"]
system_prompt: A restaurant host.
welcome_message: Hello there.
transcriber: {{provider: whisper}}
llm: {llm}
tts: {{provider: piper}}
call: {{silence_timeout_secs: 0}}
"""
        agents[f"{name}_text.yaml"] = f"""
name: {name}-text
architecture: text
system_prompt: A restaurant host.
llm: {llm}
"""
    return agents


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory, twilio_api):
    listeners = {"silent": Listener("silent"), "stalling": Listener("stalling")}
    base = tmp_path_factory.mktemp("llm-timeout")
    (base / "agents").mkdir()
    for name, text in _agents(listeners["silent"], listeners["stalling"]).items():
        (base / "agents" / name).write_text(text)
    # The agents' own base URLs are the stand-ins on loopback.
    env = {"TWILIO_API_BASE_URL": twilio_api.url, "VOXLINE_PROVIDERS_ALLOW_PRIVATE_NETWORKS": "true"}
    server = start_server(base, auth_token=AUTH_TOKEN, extra_env=env)
    try:
        server.api_key = create_key_with_cli(server_env(base, env), "default", "admin")
        yield server, listeners
    finally:
        stop_server(server)
        for listener in listeners.values():
            listener.close()


def test_llm_timeout_secs_is_bounded():
    base = {"name": "a", "system_prompt": "p", "architecture": "text"}
    assert AgentConfig.model_validate({**base, "llm": {"provider": "openai"}}).llm.timeout_secs == 10.0
    for bad in (0, -1, 121):
        with pytest.raises(ValidationError, match="timeout_secs"):
            AgentConfig.model_validate({**base, "llm": {"provider": "openai", "timeout_secs": bad}})


@pytest.mark.parametrize("mode, number, detail", [("silent", SILENT_NUMBER, NO_RESPONSE),
                                                   ("stalling", STALLING_NUMBER, STALLED)])
async def test_a_call_whose_llm_goes_quiet_gets_the_apology_and_ends_error_llm(llm_server, speech, mode, number,
                                                                                  detail):
    server, listeners = llm_server
    asked = listeners[mode].requests
    caller = await dial(server, number)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0), "no welcome"
        assert await caller.wait_agent_quiet(0.8, 30.0)
        spoke_at = await caller.say(speech["located"])
        # Transcribing takes about a second, then the LLM has TIMEOUT to start its reply. Without a bound the SDK
        # would wait 600 s (x3 with its retries): the caller would hear nothing here.
        closed_after, heard = await apology_then_hang_up(caller, spoke_at, TIMEOUT + 8,
                                                         "the caller heard nothing after speaking")
    row = server.wait_ended(call_id)
    assert listeners[mode].requests > asked, "the LLM server was never asked"
    assert (row["status"], row["disconnection_reason"]) == ("failed", "error_llm"), dict(row)
    assert row["error_detail"] == f"openai: {detail}" and row["ended_by"] == "system", dict(row)
    assert heard > 3.0, heard  # the apology, not a click
    assert closed_after < TIMEOUT + 20, closed_after


@pytest.mark.parametrize("mode, detail, said", [("silent", NO_RESPONSE, ""), ("stalling", STALLED, "Let me see.")])
def test_a_chat_turn_whose_llm_goes_quiet_errors_within_the_timeout(llm_server, mode, detail, said):
    server, _ = llm_server
    # A read timeout well under the chat API's own 120 s turn bound: without the LLM bound, this test fails here.
    with httpx.Client(base_url=server.url, headers={"x-api-key": server.api_key}, timeout=TIMEOUT + 10) as c:
        agent = next(a for a in c.get("/api/v1/agents").json()["data"] if a["name"] == f"{mode}-text")
        session = c.post("/api/v1/chat/sessions", json={"agent_id": agent["id"]})
        assert session.status_code == 201, session.text
        for _ in range(2):  # the failed turn is over: the next one is taken (no 409 turn_in_progress), and fails alike
            started = time.monotonic()
            events = chat_turn(c, session.json()["id"], "Where are you located?")
            took = time.monotonic() - started
            assert events[-1] == ("error", {"code": "llm_error", "message": detail}), events
            assert "".join(d["text"] for name, d in events if name == "message_delta") == said, events
            assert TIMEOUT - 0.1 <= took < TIMEOUT + 3, took
