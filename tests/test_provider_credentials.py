"""The server's OpenAI key goes only to trusted endpoints (config/provider_trust.py): an agent's own `llm.base_url` or
`realtime.base_url` elsewhere gets its requests without it. Chat turns against a real server and a header-recording
OpenAI-compatible listener on loopback, post-call analysis and Realtime built as the server builds them, and the
URL comparison's edge cases."""

from __future__ import annotations

import asyncio

import pytest
from loguru import logger
from pydantic import ValidationError

from config.agent import AgentConfig
from config.provider_trust import NO_SERVER_KEY, is_under, parse
from config.settings import Settings
from pipelines.providers import registry
from runtime.analysis.extract import Turn, extract
from runtime.analysis.rules import RuleDefinition, Wanted
from tests.api_helpers import chat_turn, create_agent, unique
from tests.conftest import start_api_server, stop_server
from tests.openai_listener import ANALYSIS, REPLY

SECRET = "sk-SERVER-SECRET-42"
SERVER_AUTH = f"Bearer {SECRET}"
WITHHELD_AUTH = f"Bearer {NO_SERVER_KEY}"


@pytest.fixture(scope="module")
def server(listener, tmp_path_factory):
    """A server holding an OpenAI key, whose configured endpoint is the listener's /trusted/v1 and whose operator
    allow-list holds the listener's /allowed. Private networks are allowed, so that the listener on loopback can
    stand for a self-hosted model elsewhere (tests/test_provider_endpoints.py holds the guard)."""
    srv = start_api_server(tmp_path_factory.mktemp("credentials"), "sqlite", {
        "OPENAI_API_KEY": SECRET, "VOXLINE_OPENAI_BASE_URL": f"{listener.url}/trusted/v1",
        "VOXLINE_PROVIDER_TRUSTED_URLS": f"https://proxy.example.com/openai, {listener.url}/allowed",
        "VOXLINE_PROVIDERS_ALLOW_PRIVATE_NETWORKS": "true", "VOXLINE_RATE_LIMIT_PER_MINUTE": "100000"})
    yield srv
    stop_server(srv.server)


def agent_turn(c, llm: dict) -> list[tuple[str, dict]]:
    agent = create_agent(c, {"name": unique("cred"), "architecture": "text", "system_prompt": "p", "llm": llm})
    session = c.post("/api/v1/chat/sessions", json={"agent_id": agent["id"]})
    assert session.status_code == 201, session.text
    return chat_turn(c, session.json()["id"], "hi")


# --- chat turns through a real server -------------------------------------------------------------------------------

def test_a_developer_chosen_base_url_gets_no_server_key_and_still_works_keyless(server, listener):
    path = f"/{unique('elsewhere')}"
    with server.client("developer") as c:
        events = agent_turn(c, {"provider": "openai", "model": "llama3.1", "base_url": f"{listener.url}{path}/v1"})
    assert events[-1][0] == "done", events
    assert "".join(d["text"] for n, d in events if n == "message_delta") == REPLY
    assert listener.auths(path) == [WITHHELD_AUTH]
    log = server.server.log()
    assert f"base_url http://127.0.0.1:{listener.url.rsplit(':', 1)[1]}{path}/v1 is not a trusted openai" in log
    assert SECRET not in log


@pytest.mark.parametrize("base_url", [None, "{url}/trusted/v1", "{url}/trusted/v1/", "{url}/allowed/v1"],
                         ids=["server-endpoint", "settings-url", "settings-url-slash", "allow-list"])
def test_trusted_endpoints_get_the_server_key(server, listener, base_url):
    before = len(listener.seen)
    llm = {"provider": "openai", "model": "gpt-4o-mini"}
    if base_url:
        llm["base_url"] = base_url.format(url=listener.url)
    with server.client() as c:
        events = agent_turn(c, llm)
    assert events[-1][0] == "done", events
    assert [auth for _, auth in listener.seen[before:]] == [SERVER_AUTH]


@pytest.mark.parametrize("base_url,path", [
    ("{url}/trustedx/v1", "/trustedx/"),  # a string prefix of a trusted path, not a path below it
    ("{url}/trusted/v1/../../dotted/v1", "/dotted/"),  # the client resolves the dots: below /trusted only as text
    ("{url}/allowed-not/v1", "/allowed-not/"),
])
def test_look_alikes_of_trusted_urls_get_no_server_key(server, listener, base_url, path):
    with server.client("developer") as c:
        events = agent_turn(c, {"provider": "openai", "model": "llama3.1", "base_url": base_url.format(url=listener.url)})
    assert events[-1][0] == "done", events
    assert listener.auths(path) and set(listener.auths(path)) == {WITHHELD_AUTH}


# --- as the server builds calls and analyses ------------------------------------------------------------------------

def settings(**over) -> Settings:
    return Settings(_env_file=None, OPENAI_API_KEY=SECRET, openai_base_url="http://127.0.0.1:9/v1",
                    openai_realtime_url="ws://127.0.0.1:9/v1/realtime", **over)


def realtime_auth(base_url: str | None, s: Settings) -> str:
    agent = AgentConfig(name="rt", architecture="realtime", system_prompt="p",
                        realtime={"provider": "openai", "base_url": base_url})
    service = registry.build("realtime", agent.realtime, registry.BuildContext(agent=agent, settings=s))
    return asyncio.run(service._auth_headers())["Authorization"]  # what it sends when it connects


@pytest.mark.parametrize("base_url,auth", [
    (None, SERVER_AUTH), ("ws://127.0.0.1:9/v1/realtime", SERVER_AUTH), ("wss://api.openai.com/v1/realtime", SERVER_AUTH),
    ("ws://127.0.0.1:10/v1/realtime", WITHHELD_AUTH), ("wss://api.openai.com.evil.com/v1/realtime", WITHHELD_AUTH),
    ("wss://api.openai.com@evil.com/v1/realtime", WITHHELD_AUTH),
])
def test_a_realtime_agent_sends_the_server_key_only_to_trusted_urls(base_url, auth):
    assert realtime_auth(base_url, settings()) == auth


def test_the_withheld_key_is_logged_once_per_call_without_the_secret():
    agent = AgentConfig(name="exfil", architecture="text", system_prompt="p",
                        llm={"provider": "openai", "model": "m", "base_url": "https://collector.example/v1?k=v"})
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING",
                      filter=lambda r: r["name"] == "config.provider_trust")
    try:
        registry.build("llm", agent.llm, registry.BuildContext(agent=agent, settings=settings(), label="call c1"))
    finally:
        logger.remove(sink)
    assert len(lines) == 1 and "agent 'exfil' llm (call c1)" in lines[0] and SECRET not in lines[0]
    assert "k=v" not in lines[0]  # a query can hold a secret of the agent's own


def test_a_keyless_base_url_works_on_a_server_without_a_key_and_a_trusted_one_does_not():
    keyless = Settings(_env_file=None, openai_base_url="http://127.0.0.1:9/v1")
    agent = AgentConfig(name="a", architecture="text", system_prompt="p",
                        llm={"provider": "openai", "model": "m", "base_url": "http://10.0.0.7:11434/v1"})
    llm = registry.build("llm", agent.llm, registry.BuildContext(agent=agent, settings=keyless))
    assert llm._client.api_key == NO_SERVER_KEY
    trusted = agent.model_copy(update={"llm": agent.llm.model_copy(update={"base_url": "http://127.0.0.1:9/v1"})})
    with pytest.raises(registry.ProviderError, match="OPENAI_API_KEY is not set"):
        registry.build("llm", trusted.llm, registry.BuildContext(agent=trusted, settings=keyless))


@pytest.mark.parametrize("own,auth", [(None, SERVER_AUTH), ("/trusted/v1", SERVER_AUTH), ("/mine/v1", WITHHELD_AUTH)])
def test_post_call_analysis_sends_the_server_key_only_to_trusted_urls(listener, own, auth):
    s = Settings(_env_file=None, OPENAI_API_KEY=SECRET, openai_base_url=f"{listener.url}/trusted/v1",
                 providers_allow_private_networks=True)
    agent = AgentConfig(name="analysed", architecture="text", system_prompt="p",
                        llm={"provider": "openai", "model": "gpt-4o-mini",
                             "base_url": own and f"{listener.url}{own}"})
    wanted = Wanted([("r1", RuleDefinition(fields=[{"name": "dish", "type": "string", "description": "The dish."}]))])
    before = len(listener.seen)
    result = asyncio.run(extract(agent, [Turn("user", "Lasagna please.")], wanted, s))
    assert result["fields"] == ANALYSIS["fields"]
    assert [(path.split("/")[1], a) for path, a in listener.seen[before:]] == [((own or "/trusted").split("/")[1], auth)]


# --- the comparison -------------------------------------------------------------------------------------------------

TRUSTED = ["https://api.openai.com", "http://127.0.0.1:8102/v1", "https://proxy.example.com/team/openai/"]


@pytest.mark.parametrize("url", [
    "https://api.openai.com/v1", "https://api.openai.com", "HTTPS://API.OpenAI.com:443/v1/",
    "wss://api.openai.com/v1/realtime", "https://api.openai.com:0443/v1",
    "http://127.0.0.1:8102/v1", "http://127.0.0.1:8102/v1/", "ws://127.0.0.1:8102/v1/realtime",
    "https://proxy.example.com/team/openai", "https://proxy.example.com/team/openai/v1",
])
def test_urls_under_a_trusted_prefix(url):
    assert is_under(url, TRUSTED)


@pytest.mark.parametrize("url", [
    "https://api.openai.com.evil.com/v1",  # a longer host
    "https://evil-api.openai.com/v1", "https://api.openai.com./v1",  # another host, a trailing dot
    "https://api.openai.com@evil.com/v1", "https://api.openai.com:443@evil.com/v1",  # userinfo: the host is evil.com
    "https://api.openai.com\\@evil.com/v1", "https://api.openai.com%2eevil.com/v1",
    "http://api.openai.com/v1", "ws://api.openai.com/v1/realtime",  # plain text to a TLS origin
    "https://api.openai.com:8443/v1", "http://127.0.0.1:8103/v1", "http://127.0.0.2:8102/v1",
    "http://127.0.0.1:8102/v10", "http://127.0.0.1:8102/", "http://127.0.0.1:8102/v1x/chat",
    "http://127.0.0.1:8102/v1/../admin", "http://127.0.0.1:8102/v1/%2e%2e/admin",
    "https://proxy.example.com/team", "https://proxy.example.com/team/openai-evil",
    "https://аpi.openai.com/v1",  # Cyrillic а
    "https://api.openai.com/v1?x=1", "https://api.openai.com/v1#x", " https://api.openai.com/v1",
    "https://api.openai.com/v1\n", "https:api.openai.com/v1", "//api.openai.com/v1", "ftp://api.openai.com/v1",
    "https://api.openai.com:99999/v1", "", "not a url",
])
def test_urls_not_under_a_trusted_prefix(url):
    assert not is_under(url, TRUSTED)


def test_the_operator_allow_list_is_read_from_the_environment_and_checked(monkeypatch):
    monkeypatch.setenv("VOXLINE_PROVIDER_TRUSTED_URLS", " https://a.example/v1 ,http://10.0.0.5:8000,")
    assert Settings(_env_file=None).provider_trusted_urls == ["https://a.example/v1", "http://10.0.0.5:8000"]
    monkeypatch.delenv("VOXLINE_PROVIDER_TRUSTED_URLS")
    assert Settings(_env_file=None).provider_trusted_urls == []
    for bad in ("https://u:p@a.example/", "a.example", "https://a.example/v1?x=1"):
        monkeypatch.setenv("VOXLINE_PROVIDER_TRUSTED_URLS", bad)
        with pytest.raises(ValidationError, match="not a plain http"):
            Settings(_env_file=None)
    assert parse("WSS://Host.Example:443/a/b/") == ("https", "host.example", 443, ("a", "b"))
