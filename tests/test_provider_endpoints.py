"""An agent's own `llm.base_url` / `realtime.base_url` may not reach the server's private network
(pipelines/providers/endpoint_guard.py): refused when an agent is saved, and refused again on every connection
(chat turns, calls' LLM and Realtime, post-call analysis), unless the operator trusts the endpoint or sets
VOXLINE_PROVIDERS_ALLOW_PRIVATE_NETWORKS. A real server, the real OpenAI SDK and an OpenAI-compatible listener on
loopback, which stands for an internal service."""

from __future__ import annotations

import asyncio
import ipaddress

import httpx
import httpx2
import openai
import pytest
from loguru import logger

from config.agent import AgentConfig
from config.settings import Settings
from pipelines.providers import endpoint_guard, registry
from pipelines.tools.netguard import RefusedAddress
from runtime.analysis.extract import AnalysisError, Turn, extract
from runtime.analysis.rules import RuleDefinition, Wanted
from tests.api_helpers import chat_turn, create_agent, refused, unique
from tests.calls import apology_then_hang_up, dial
from tests.conftest import AUTH_TOKEN, start_api_server, start_server, stop_server
from tests.openai_listener import REPLY

HINT = "VOXLINE_PROVIDERS_ALLOW_PRIVATE_NETWORKS=true allows it"
LLM_NUMBER = "+15550100060"
REALTIME_NUMBER = "+15550100061"


@pytest.fixture(scope="module")
def guarded(listener, tmp_path_factory):
    """A server with the defaults (the guard on), whose operator trusts the listener's /allowed."""
    srv = start_api_server(tmp_path_factory.mktemp("endpoints"), "sqlite", {
        "OPENAI_API_KEY": "sk-test-endpoints", "VOXLINE_PROVIDER_TRUSTED_URLS": f"{listener.url}/allowed",
        "VOXLINE_RATE_LIMIT_PER_MINUTE": "100000"})
    yield srv
    stop_server(srv.server)


def text_agent(llm: dict) -> dict:
    return {"name": unique("endpoint"), "architecture": "text", "system_prompt": "p", "llm": llm}


def said(events: list[tuple[str, dict]]) -> str:
    return "".join(d["text"] for n, d in events if n == "message_delta")


@pytest.mark.parametrize("base_url,address", [
    ("http://127.0.0.1:{port}/internal/v1", "127.0.0.1"),
    ("http://localhost:{port}/internal/v1", "127.0.0.1"),  # a name is resolved, every address it has checked
    ("http://10.0.0.7:11434/v1", "10.0.0.7"),
    ("http://169.254.169.254/latest", "169.254.169.254"),  # a cloud's metadata service
    ("http://[::ffff:127.0.0.1]:{port}/v1", "127.0.0.1"),
])
def test_an_agent_whose_own_llm_endpoint_is_private_is_refused(guarded, listener, base_url, address):
    url = base_url.format(port=listener.url.rsplit(":", 1)[1])
    before = len(listener.seen)
    with guarded.client() as c:
        message = refused(c.post("/api/v1/agents", json=text_agent(
            {"provider": "openai", "model": "llama3.1", "base_url": url})), "llm.base_url")
    assert address in message and HINT in message, message
    assert len(listener.seen) == before


def test_a_realtime_endpoint_and_a_change_to_a_private_one_are_refused(guarded, listener):
    with guarded.client() as c:
        message = refused(c.post("/api/v1/agents", json={
            "name": unique("rt"), "architecture": "realtime", "system_prompt": "p",
            "realtime": {"provider": "openai", "base_url": "ws://127.0.0.1:9/v1/realtime"}}), "realtime.base_url")
        assert HINT in message
        agent = create_agent(c, text_agent({"provider": "openai", "model": "m",
                                            "base_url": f"{listener.url}/allowed/v1"}))
        refused(c.patch(f"/api/v1/agents/{agent['id']}", json={"llm": {"base_url": "http://10.1.2.3/v1"}}),
                "llm.base_url")
        assert c.get(f"/api/v1/agents/{agent['id']}").json()["llm"]["base_url"] == f"{listener.url}/allowed/v1"
        # Renaming it leaves its (trusted) endpoint alone, and is not refused.
        assert c.patch(f"/api/v1/agents/{agent['id']}", json={"name": unique("renamed")}).status_code == 200


def test_trusted_and_configured_endpoints_stay_reachable_and_unresolvable_names_are_saved(guarded, listener):
    with guarded.client() as c:
        trusted = create_agent(c, text_agent({"provider": "openai", "model": "m",
                                              "base_url": f"{listener.url}/allowed/v1"}))
        session = c.post("/api/v1/chat/sessions", json={"agent_id": trusted["id"]}).json()
        events = chat_turn(c, session["id"], "hi")
        assert events[-1][0] == "done" and said(events) == REPLY, events
        # A name that does not resolve today is saved: each connection resolves and checks it again.
        create_agent(c, text_agent({"provider": "openai", "model": "m", "base_url": "https://llm.invalid/v1"}))


def test_a_stored_private_endpoint_is_refused_at_connect_with_the_reason(guarded, listener, tmp_path):
    """An agent saved while private networks were allowed (or whose name resolved elsewhere then, as with DNS
    rebinding): the guarded server refuses the connection itself, the turn ends in an `error` event saying why,
    the internal service sees nothing, and the log says which agent and field."""
    env = {"VOXLINE_DATABASE_URL": guarded.database_url, "VOXLINE_DATA_DIR": str(guarded.server.data_dir),
           "VOXLINE_PROVIDERS_ALLOW_PRIVATE_NETWORKS": "true"}
    allowing = start_server(tmp_path, auth_token=None, extra_env=env)
    try:
        with httpx.Client(base_url=allowing.url, headers={"x-api-key": guarded.admin_key}, timeout=30) as c:
            agent = create_agent(c, text_agent({"provider": "openai", "model": "llama3.1",
                                                "base_url": f"{listener.url}/internal/v1"}))
            # Allowed there: the endpoint answers (without the server's key).
            session = c.post("/api/v1/chat/sessions", json={"agent_id": agent["id"]}).json()
            assert said(chat_turn(c, session["id"], "hi")) == REPLY
    finally:
        stop_server(allowing)
    before = len(listener.seen)
    with guarded.client() as c:
        session = c.post("/api/v1/chat/sessions", json={"agent_id": agent["id"]}).json()
        events = chat_turn(c, session["id"], "hi")
    assert events[-1][0] == "error", events
    assert "127.0.0.1" in events[-1][1]["message"] and HINT in events[-1][1]["message"], events
    assert len(listener.seen) == before
    log = guarded.server.log()
    assert f"agent {agent['name']!r} llm" in log and "llm.base_url: '127.0.0.1' resolves to 127.0.0.1" in log


# --- calls -----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def call_server(listener, tmp_path_factory, twilio_api):
    """The guard on, and two agents from files (the operator's, but their base URLs are the agents' own, so they
    are held to it too): a pipeline agent whose LLM and a Realtime agent whose model are on loopback."""
    base = tmp_path_factory.mktemp("endpoint-calls")
    (base / "agents").mkdir()
    (base / "agents" / "private_llm.yaml").write_text(f"""
name: private-llm
phone_numbers: ["{LLM_NUMBER}"]
system_prompt: A restaurant host.
welcome_message: Hello there.
transcriber: {{provider: whisper}}
llm: {{provider: openai, model: m, base_url: "{listener.url}/call-llm/v1"}}
tts: {{provider: piper}}
call: {{silence_timeout_secs: 0}}
""")
    (base / "agents" / "private_realtime.yaml").write_text(f"""
name: private-realtime
architecture: realtime
phone_numbers: ["{REALTIME_NUMBER}"]
system_prompt: A restaurant host.
welcome_message: Hello there.
realtime: {{provider: openai, voice: alloy, base_url: "ws://127.0.0.1:9/v1/realtime"}}
call: {{silence_timeout_secs: 0}}
""")
    server = start_server(base, auth_token=AUTH_TOKEN,
                          extra_env={"TWILIO_API_BASE_URL": twilio_api.url, "OPENAI_API_KEY": "sk-test"})
    yield server
    stop_server(server)


async def test_a_calls_private_llm_is_refused_and_the_call_ends_error_llm(call_server, listener, speech):
    before = len(listener.seen)
    caller = await dial(call_server, LLM_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        assert await caller.wait_agent_audio(0.0, 20.0), "no welcome"
        assert await caller.wait_agent_quiet(0.8, 30.0)
        spoke_at = await caller.say(speech["located"])
        _, heard = await apology_then_hang_up(caller, spoke_at, 20.0, "the caller heard nothing after speaking")
    row = call_server.wait_ended(call_id)
    assert (row["status"], row["disconnection_reason"]) == ("failed", "error_llm"), dict(row)
    assert "llm.base_url: '127.0.0.1' resolves to 127.0.0.1" in row["error_detail"], dict(row)
    assert heard > 3.0, heard  # the apology
    assert len(listener.seen) == before
    assert "agent 'private-llm' llm" in call_server.log()


async def test_a_calls_private_realtime_model_is_refused_and_the_call_ends_error_realtime(call_server):
    caller = await dial(call_server, REALTIME_NUMBER)
    call_id = caller.answer.parameters["call_id"]
    async with caller:
        _, heard = await apology_then_hang_up(caller, 0.0, 20.0)
    row = call_server.wait_ended(call_id)
    assert (row["status"], row["disconnection_reason"]) == ("failed", "error_realtime"), dict(row)
    assert "realtime.base_url: '127.0.0.1' resolves to 127.0.0.1" in row["error_detail"], dict(row)
    assert heard > 3.0, heard


# --- as the server builds calls and analyses ------------------------------------------------------------------------

def settings(**over) -> Settings:
    return Settings(_env_file=None, OPENAI_API_KEY="sk-test", openai_base_url="http://127.0.0.1:9/v1",
                    openai_realtime_url="ws://127.0.0.1:9/v1/realtime", **over)


def build(kind: str, section: dict, s: Settings):
    agent = AgentConfig(name="built", architecture="text" if kind == "llm" else "realtime", system_prompt="p",
                        **{kind: section})
    return registry.build(kind, getattr(agent, kind), registry.BuildContext(agent=agent, settings=s, label="call c1"))


async def _complete(llm) -> str:
    reply = await llm._client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content


def test_a_calls_llm_is_refused_at_once_with_the_reason_and_nothing_sent(listener):
    llm = build("llm", {"provider": "openai", "model": "m", "base_url": f"{listener.url}/call/v1"}, settings())
    before = len(listener.seen)
    with pytest.raises(openai.PermissionDeniedError, match="llm.base_url: '127.0.0.1' resolves to 127.0.0.1") as info:
        asyncio.run(_complete(llm))
    assert HINT in str(info.value)
    assert len(listener.seen) == before  # and no retries: the SDK does not retry a 403
    # Allowed by the operator, the same agent's LLM answers.
    allowed = build("llm", {"provider": "openai", "model": "m", "base_url": f"{listener.url}/call/v1"},
                    settings(providers_allow_private_networks=True))
    assert asyncio.run(_complete(allowed)) == REPLY


def test_the_checked_address_is_the_one_dialled_and_the_host_is_kept(listener, monkeypatch):
    """The connection goes to the address the check approved, whatever a second DNS answer would say; the request
    still names its host. (The resolver is replaced here: a public address cannot be reached offline.)"""
    port = int(listener.url.rsplit(":", 1)[1])
    asked: list[tuple[str, int]] = []

    async def public_dns(host, port_, *, allow_private):
        asked.append((host, port_))
        assert not allow_private
        return ipaddress.ip_address("127.0.0.1")  # "public", for this test; the listener is there

    monkeypatch.setattr(endpoint_guard, "resolve_checked", public_dns)
    inner = httpx2.AsyncHTTPTransport()  # the OpenAI SDK's HTTP library
    transport = endpoint_guard.PublicOnlyTransport(inner, who="agent 'a' llm", field="llm.base_url")

    async def post(times: int) -> list[int]:
        async with httpx2.AsyncClient(transport=transport) as client:
            return [(await client.post(f"http://llm.example:{port}/pinned/v1/chat/completions",
                                       json={"model": "m"})).status_code for _ in range(times)]

    assert asyncio.run(post(2)) == [200, 200]
    # Checked once: a call's later turns go to the address checked for the first, with no lookup of their own.
    assert asked == [("llm.example", port)]
    assert [p for p, _ in listener.seen[-2:]] == ["/pinned/v1/chat/completions"] * 2
    assert listener.hosts[-2:] == [f"llm.example:{port}"] * 2


def test_a_realtime_agents_private_endpoint_is_refused_when_dialled():
    with pytest.raises(RefusedAddress, match=r"realtime.base_url: '127.0.0.1' resolves to 127.0.0.1.*ALLOW_PRIVATE"):
        asyncio.run(endpoint_guard.connect_public_only("ws://127.0.0.1:9/v1/realtime", who="agent 'rt' realtime",
                                                       field="realtime.base_url"))
    guarded = build("realtime", {"provider": "openai", "base_url": "ws://10.0.0.8/v1/realtime"}, settings())
    assert guarded._public_only_for == "agent 'built' realtime (call c1)"  # its connect goes through the check
    for trusted in ({"provider": "openai"}, {"provider": "openai", "base_url": "ws://127.0.0.1:9/v1/realtime"}):
        assert build("realtime", trusted, settings())._public_only_for is None
    allowed = build("realtime", {"provider": "openai", "base_url": "ws://10.0.0.8/v1/realtime"},
                    settings(providers_allow_private_networks=True))
    assert allowed._public_only_for is None


def test_post_call_analysis_is_held_to_the_same_addresses(listener):
    agent = AgentConfig(name="analysed", architecture="text", system_prompt="p",
                        llm={"provider": "openai", "model": "m", "base_url": f"{listener.url}/analysis/v1"})
    wanted = Wanted([("r1", RuleDefinition(fields=[{"name": "dish", "type": "string", "description": "The dish."}]))])
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    try:
        with pytest.raises(AnalysisError, match="llm.base_url: '127.0.0.1' resolves to 127.0.0.1"):
            asyncio.run(extract(agent, [Turn("user", "Lasagna please.")], wanted, settings()))
    finally:
        logger.remove(sink)
    assert not [p for p, _ in listener.seen if p.startswith("/analysis/")]
    assert any("analysis of agent 'analysed'" in line and "llm.base_url" in line for line in lines), lines
