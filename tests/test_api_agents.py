"""Agents: /api/v1/agents (the AgentConfig as JSON) and the Kupe-compatible aliases (simple, summary, PUT).

The server is shared by the whole session, so every test names its agents uniquely and filters by that name.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import datetime

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.api_helpers import create_agent, refused, unique
from tests.conftest import server_env

CARTESIA_VOICE = "79a125e8-cd45-4c13-8a67-188112f4dd22"




def pipeline(name: str, **over) -> dict:
    return {"name": name, "system_prompt": "You take bookings.", "welcome_message": "Hello!",
            "transcriber": {"provider": "whisper"},
            "llm": {"provider": "scripted", "script": {"rules": [{"keywords": ["hours"], "reply": "Nine to five."}]}},
            "tts": {"provider": "piper", "voice": "en_US-joe-medium"}, **over}






# --- create, read, list ---------------------------------------------------------------------------------------------

def test_create_then_get_returns_the_config_and_the_kupe_block(api):
    name = unique("create")
    with api.client("developer") as c:
        created = create_agent(c, pipeline(name))
        got = c.get(f"/api/v1/agents/{created['id']}")
    assert got.status_code == 200 and got.json() == created
    body = got.json()
    assert body["name"] == name and body["architecture"] == "pipeline" and body["tts"]["voice"] == "en_US-joe-medium"
    assert body["llm"]["script"]["rules"][0]["reply"] == "Nine to five."
    assert body["vad"] == {"confidence": 0.7, "start_secs": 0.1, "stop_secs": 0.2, "min_volume": 0.3}
    assert body["created_at"].endswith(("Z", "+00:00")) and body["updated_at"]
    assert body["agent"] == {"id": body["id"], "name": name, "first_response_message": "Hello!", "description": None}


def test_create_refuses_invalid_configs_naming_the_field(api):
    with api.client("admin") as c:
        msg = refused(c.post("/api/v1/agents", json=pipeline(unique(), tts={"provider": "piper", "voice": "x"})),
                      "tts.voice")
        assert msg == "tts.voice: unknown voice 'x'; known: en_US-joe-medium"
        refused(c.post("/api/v1/agents", json=pipeline(unique(), transcriber={"provider": "nosuch"})),
                "transcriber.provider")
        refused(c.post("/api/v1/agents", json=pipeline(unique(), llm={"provider": "openai", "model": "gpt-9"})),
                "llm.model")
        text_with_tts = {"name": unique(), "architecture": "text", "system_prompt": "p", "llm": {}, "tts": {}}
        refused(c.post("/api/v1/agents", json=text_with_tts), "tts")
        refused(c.post("/api/v1/agents", json={"name": unique(), "architecture": "realtime", "system_prompt": "p"}),
                "realtime")
        refused(c.post("/api/v1/agents", json={"system_prompt": "p", "llm": {}, "architecture": "text"}), "name")
        refused(c.post("/api/v1/agents", json=pipeline(unique(), colour="blue")), "colour")
        refused(c.post("/api/v1/agents", json=pipeline(unique(), vad={"confidence": 3})), "vad.confidence")
        assert c.post("/api/v1/agents", content=b"[1]", headers={"content-type": "application/json"}).status_code == 400


def test_list_pages_and_filters_within_the_workspace(api):
    tag = unique("list")
    with api.client("admin") as c:
        ids = [create_agent(c, pipeline(f"{tag}-{i}"))["id"] for i in range(3)]
        text_id = create_agent(c, {"name": f"{tag}-TEXT", "architecture": "text", "system_prompt": "p", "llm": {}})["id"]

        first = c.get("/api/v1/agents", params={"name_search": tag.upper(), "limit": 1}).json()
        assert first["pagination"] == {"page": 1, "limit": 1, "total": 4, "has_next": True}
        assert [a["id"] for a in first["data"]] == ids[:1]
        last = c.get("/api/v1/agents", params={"name_search": tag, "limit": 1, "page": 4}).json()
        assert last["pagination"]["has_next"] is False and [a["id"] for a in last["data"]] == [text_id]
        beyond = c.get("/api/v1/agents", params={"name_search": tag, "limit": 1, "page": 5}).json()
        assert beyond["data"] == [] and beyond["pagination"]["total"] == 4

        texts = c.get("/api/v1/agents", params={"name_search": tag, "architecture": "text"}).json()
        assert [a["id"] for a in texts["data"]] == [text_id] and texts["data"][0]["architecture"] == "text"
        assert set(texts["data"][0]) == {"id", "name", "architecture", "created_at", "updated_at"}
        pipelines = c.get("/api/v1/agents", params={"name_search": tag, "architecture": "pipeline"}).json()
        assert [a["id"] for a in pipelines["data"]] == ids

        everyone = c.get("/api/v1/agents", params={"limit": 100}).json()["data"]
        assert {"demo", "long-welcome", "needs-deepgram", "chat-only"} <= {a["name"] for a in everyone}
        # LIKE wildcards are matched literally.
        assert c.get("/api/v1/agents", params={"name_search": "%"}).json()["pagination"]["total"] == 0
    with api.client("other") as c:
        assert c.get("/api/v1/agents", params={"name_search": tag}).json()["pagination"]["total"] == 0


def test_list_refuses_bad_query_parameters(api):
    with api.client("admin") as c:
        refused(c.get("/api/v1/agents", params={"limit": 0}), "limit")
        refused(c.get("/api/v1/agents", params={"limit": 101}), "limit")
        refused(c.get("/api/v1/agents", params={"page": 0}), "page")
        refused(c.get("/api/v1/agents", params={"architecture": "telepathy"}), "architecture")


# --- PATCH -----------------------------------------------------------------------------------------------------------

def test_patch_merges_nested_objects_and_keeps_the_rest(api):
    with api.client("admin") as c:
        before = create_agent(c, pipeline(unique("patch")))
        r = c.patch(f"/api/v1/agents/{before['id']}",
                    json={"llm": {"temperature": 0.2}, "vad": {"confidence": 0.5}, "welcome_message": None})
        assert r.status_code == 200, r.text
        after = r.json()
        assert after["llm"] == {**before["llm"], "temperature": 0.2}  # provider and script untouched
        assert after["vad"] == {**before["vad"], "confidence": 0.5}
        assert after["welcome_message"] is None and after["agent"]["first_response_message"] is None
        assert after["tts"] == before["tts"] and after["system_prompt"] == before["system_prompt"]
        assert datetime.fromisoformat(after["updated_at"]) >= datetime.fromisoformat(before["updated_at"])
        assert after["created_at"] == before["created_at"]
        assert c.get(f"/api/v1/agents/{before['id']}").json() == after

        renamed = c.patch(f"/api/v1/agents/{before['id']}", json={"name": before["name"] + "-2"}).json()
        assert renamed["name"] == renamed["agent"]["name"] == before["name"] + "-2"
        listed = c.get("/api/v1/agents", params={"name_search": before["name"] + "-2"}).json()["data"]
        assert [a["id"] for a in listed] == [before["id"]]


def test_patch_refuses_invalid_results_and_changes_nothing(api):
    with api.client("admin") as c:
        agent = create_agent(c, pipeline(unique("patchbad")))
        url = f"/api/v1/agents/{agent['id']}"
        msg = refused(c.patch(url, json={"tts": {"voice": "x"}}), "tts.voice")
        assert msg == "tts.voice: unknown voice 'x'; known: en_US-joe-medium"
        refused(c.patch(url, json={"tts": {"provider": "nosuch"}}), "tts.provider")
        refused(c.patch(url, json={"transcriber": {"model": "large-v3"}}), "transcriber.model")
        refused(c.patch(url, json={"architecture": "text"}), "transcriber")  # its transcriber and tts remain
        refused(c.patch(url, json={"architecture": "realtime"}), "realtime")
        refused(c.patch(url, json={"llm": {"temperature": 5}}), "llm.temperature")
        refused(c.patch(url, json={"id": "mine"}), "id")
        assert c.get(url).json() == agent

        # Switching to text is possible by removing what a text agent may not have.
        text_agent = c.patch(url, json={"architecture": "text", "transcriber": None, "tts": None}).json()
        assert text_agent["architecture"] == "text" and text_agent["tts"] is None
        refused(c.patch(url, json={"tts": {"provider": "piper"}}), "tts")
        realtime = c.patch(url, json={"architecture": "realtime", "realtime": {"voice": "alloy"}, "llm": None})
        assert realtime.status_code == 200 and realtime.json()["realtime"]["provider"] == "openai"


def test_names_are_unique_within_a_workspace_only(api):
    taken = unique("taken")
    with api.client("admin") as c:
        first = create_agent(c, pipeline(taken))
        second = create_agent(c, pipeline(unique("second")))
        clash = c.post("/api/v1/agents", json=pipeline(taken))
        assert clash.status_code == 409 and clash.json()["error"]["code"] == "conflict"
        rename = c.patch(f"/api/v1/agents/{second['id']}", json={"name": taken})
        assert rename.status_code == 409 and rename.json()["error"]["code"] == "conflict"
        put = c.put(f"/api/v1/agents/{second['id']}", json={"agent": {"name": taken}})
        assert put.status_code == 409
        assert c.post("/api/v1/agents/simple", json={"name": taken}).status_code == 409
        # Patching an agent with its own name is not a clash.
        assert c.patch(f"/api/v1/agents/{first['id']}", json={"name": taken}).status_code == 200
    with api.client("other") as c:
        assert c.post("/api/v1/agents", json=pipeline(taken)).status_code == 201


# --- workspaces and keys ---------------------------------------------------------------------------------------------

def test_another_workspaces_agent_is_404(api):
    with api.client("admin") as c:
        agent = create_agent(c, pipeline(unique("mine")))
    url = f"/api/v1/agents/{agent['id']}"
    with api.client("other") as c:
        for r in (c.get(url), c.patch(url, json={"system_prompt": "stolen"}),
                  c.put(url, json={"agent": {"system_prompt": "stolen"}}), c.delete(url)):
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "not_found"
        assert c.get("/api/v1/agents/summary", params={"name_search": agent["name"]}).json()["data"] == []
    with api.client("admin") as c:
        assert c.get(url).json() == agent
        assert c.get("/api/v1/agents/0123456789abcdef0123456789abcdef").status_code == 404


def test_every_agent_route_needs_a_key(api):
    with api.client("admin") as c:
        agent_id = create_agent(c, pipeline(unique("keyless")))["id"]
    url = f"/api/v1/agents/{agent_id}"
    with api.client(None) as c:
        for r in (c.get("/api/v1/agents"), c.post("/api/v1/agents", json=pipeline(unique())), c.get(url),
                  c.patch(url, json={"system_prompt": "x"}), c.put(url, json={}), c.delete(url),
                  c.post("/api/v1/agents/simple", json={"name": unique()}), c.get("/api/v1/agents/summary")):
            assert r.status_code == 401, r.text
            assert r.json()["error"]["code"] == "missing_api_key"
    with api.client("admin") as c:
        assert c.get(url).status_code == 200  # nothing was changed or deleted


# --- DELETE ----------------------------------------------------------------------------------------------------------

def sql(url: str, statement: str, **params) -> list[dict]:
    async def run():
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return [dict(row._mapping) for row in await conn.execute(text(statement), params)]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_delete_keeps_calls_and_unmaps_numbers(api):
    url = api.database_url
    number = "+15550107001"
    with api.client("admin") as c:
        agent = create_agent(c, pipeline(unique("doomed")))
        keeper = create_agent(c, pipeline(unique("keeper")))
    env = server_env(api.server.data_dir.parent, {"VOXLINE_DATABASE_URL": url} if api.backend == "postgresql" else {})
    subprocess.run([sys.executable, "-m", "runtime.cli", "numbers", "add", number, "--agent", agent["id"]],
                   env=env, cwd=api.server.data_dir.parent, check=True, capture_output=True, text=True)
    call = {"To": number, "From": "+15550199999", "CallSid": "CA" + uuid.uuid4().hex}
    answer = httpx.post(f"{api.url}/telephony/twilio/voice", data=call, timeout=30)
    assert answer.status_code == 200 and "<Connect>" in answer.text, answer.text
    rows = sql(url, "SELECT id, agent_id FROM calls WHERE twilio_call_sid = :sid", sid=call["CallSid"])
    assert [r["agent_id"] for r in rows] == [agent["id"]]
    call_id = rows[0]["id"]

    with api.client("admin") as c:
        r = c.delete(f"/api/v1/agents/{agent['id']}")
        assert r.status_code == 200 and r.json() == {"id": agent["id"], "deleted": True}
        assert c.get(f"/api/v1/agents/{agent['id']}").status_code == 404
        assert c.delete(f"/api/v1/agents/{agent['id']}").status_code == 404
        assert c.get(f"/api/v1/agents/{keeper['id']}").status_code == 200

    assert sql(url, "SELECT agent_id FROM calls WHERE id = :id", id=call_id) == [{"agent_id": None}]
    assert sql(url, "SELECT agent_id FROM phone_numbers WHERE number = :n", n=number) == [{"agent_id": None}]
    again = httpx.post(f"{api.url}/telephony/twilio/voice", data=call, timeout=30)
    assert "not in service" in again.text


# --- Kupe aliases ----------------------------------------------------------------------------------------------------

def test_simple_create_uses_the_platform_defaults(api):
    name = unique("simple")
    with api.client("admin") as c:
        r = c.post("/api/v1/agents/simple", json={"name": name, "description": "You sell bikes."})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["architecture"] == "pipeline" and body["system_prompt"] == "You sell bikes."
        assert (body["transcriber"]["provider"], body["llm"]["provider"], body["tts"]["provider"]) == \
            ("whisper", "scripted", "piper")
        assert c.get(f"/api/v1/agents/{body['id']}").json() == body
        plain = c.post("/api/v1/agents/simple", json={"name": unique("simple")}).json()
        assert plain["system_prompt"] == "You are a helpful phone assistant."
        refused(c.post("/api/v1/agents/simple", json={"name": ""}), "name")
        refused(c.post("/api/v1/agents/simple", json={"description": "no name"}), "name")


def test_summary_pages_with_page_size(api):
    tag = unique("summary")
    with api.client("admin") as c:
        ids = [c.post("/api/v1/agents/simple", json={"name": f"{tag}-{i}"}).json()["id"] for i in range(3)]
        first = c.get("/api/v1/agents/summary", params={"name_search": tag, "page_size": 2}).json()
        assert first["pagination"] == {"page": 1, "page_size": 2, "total": 3, "has_next": True}
        assert [a["id"] for a in first["data"]] == ids[:2]
        second = c.get("/api/v1/agents/summary", params={"name_search": tag, "page_size": 2, "page": 2}).json()
        assert second["pagination"]["has_next"] is False and [a["id"] for a in second["data"]] == ids[2:]
        refused(c.get("/api/v1/agents/summary", params={"page_size": 101}), "page_size")


def test_put_translates_kupes_nested_keys(api):
    with api.client("admin") as c:
        agent = create_agent(c, pipeline(unique("put")))
        url = f"/api/v1/agents/{agent['id']}"
        r = c.put(url, json={
            "agent": {"welcome_message": "Welcome to Kupe!", "system_prompt": "Be brief."},
            "agent_model_config": {"temperature": 0.3, "max_tokens": 200},
            "transcriber_config": {"language": "en"},
            "vad_config": {"confidence": 0.55, "stop_secs": 0.4},
        })
        assert r.status_code == 200, r.text
        got = c.get(url).json()
        assert got == r.json()
        assert got["welcome_message"] == got["agent"]["first_response_message"] == "Welcome to Kupe!"
        assert got["system_prompt"] == "Be brief."
        assert got["llm"] == {**agent["llm"], "temperature": 0.3, "max_tokens": 200}
        assert got["vad"] == {**agent["vad"], "confidence": 0.55, "stop_secs": 0.4}
        assert got["tts"] == agent["tts"]

        # A model name picks its provider from the catalog.
        llm = c.put(url, json={"agent_model_config": {"model_name": "gpt-4o-mini"}}).json()["llm"]
        assert (llm["provider"], llm["model"], llm["temperature"]) == ("openai", "gpt-4o-mini", 0.3)
        # An OpenAI-compatible server takes any model name, so the provider stays.
        llm = c.put(url, json={"agent_model_config": {"model_name": "llama-3.1-8b",
                                                      "base_url": "https://llm.invalid/v1"}}).json()["llm"]
        assert (llm["provider"], llm["model"], llm["base_url"]) == ("openai", "llama-3.1-8b", "https://llm.invalid/v1")
        unchanged = c.put(url, json={"tts_config": {}, "vad_config": None})
        assert unchanged.status_code == 200 and unchanged.json()["tts"] == agent["tts"]
        stt = c.put(url, json={"transcriber_config": {"transcriber_model_name": "nova-3"}}).json()["transcriber"]
        assert (stt["provider"], stt["model"]) == ("deepgram", "nova-3")
        stt = c.put(url, json={"transcriber_config": {"transcriber_model_name": "tiny.en"}}).json()["transcriber"]
        assert (stt["provider"], stt["model"]) == ("whisper", "tiny.en")
        tts = c.put(url, json={"tts_config": {"tts_model_name": "sonic-2"}}).json()["tts"]
        assert (tts["provider"], tts["model"], tts["voice"]) == ("cartesia", "sonic-2", None)  # piper's voice dropped
        tts = c.put(url, json={"tts_config": {"voice_name": CARTESIA_VOICE}}).json()["tts"]
        assert (tts["provider"], tts["voice"]) == ("cartesia", CARTESIA_VOICE)  # a voice keeps the provider
        tts = c.put(url, json={"tts_config": {"provider": "piper"}}).json()["tts"]
        assert tts == {"provider": "piper", "voice": None, "model": None}


def test_put_refuses_naming_kupes_fields(api):
    with api.client("admin") as c:
        agent = create_agent(c, pipeline(unique("putbad")))
        url = f"/api/v1/agents/{agent['id']}"
        msg = refused(c.put(url, json={"agent_model_config": {"model_name": "gpt-9"}}), "agent_model_config.model_name")
        assert "gpt-9" in msg and "gpt-4o-mini" in msg
        refused(c.put(url, json={"tts_config": {"voice_name": "x"}}), "tts_config.voice_name")
        refused(c.put(url, json={"tts_config": {"provider": "nosuch"}}), "tts_config.provider")
        refused(c.put(url, json={"transcriber_config": {"language": "xx"}}), "transcriber_config.language")
        refused(c.put(url, json={"vad_config": {"confidence": 2}}), "vad_config.confidence")
        refused(c.put(url, json={"agent": {"name": ""}}), "agent.name")
        refused(c.put(url, json={"agent_model_config": {"temperature": "hot"}}), "agent_model_config.temperature")
        refused(c.put(url, json={"tts_config": {"speed": 2}}), "tts_config.speed")
        assert c.get(url).json() == agent


def test_put_switches_architecture(api):
    with api.client("admin") as c:
        agent = create_agent(c, pipeline(unique("switch")))
        url = f"/api/v1/agents/{agent['id']}"
        # Kupe cannot remove sections, so switching drops what the new architecture forbids...
        text_agent = c.put(url, json={"agent": {"architecture": "text"}}).json()
        assert text_agent["architecture"] == "text" and text_agent["tts"] is None and text_agent["transcriber"] is None
        assert text_agent["llm"] == agent["llm"]
        # ...unless the same request sends it.
        refused(c.put(url, json={"tts_config": {"provider": "piper"}}), "tts")
        # A realtime agent starts from the defaults, and its "model" is the realtime model.
        realtime = c.put(url, json={"agent": {"architecture": "realtime"},
                                    "agent_model_config": {"model_name": "gpt-realtime"}}).json()
        assert realtime["realtime"]["provider"] == "openai" and realtime["realtime"]["model"] == "gpt-realtime"
        refused(c.put(url, json={"agent_model_config": {"temperature": 0.5}}), "agent_model_config.temperature")
        back = c.put(url, json={"agent": {"architecture": "pipeline"}}).json()
        assert back["transcriber"]["provider"] == "whisper" and back["tts"]["provider"] == "piper"


# --- input limits (QA #4, #8, #11, #18) -----------------------------------------------------------------------------

def test_nul_in_names_and_name_searches_is_refused_naming_the_field(api):
    # PostgreSQL cannot store or compare NUL in a text column: these were 500s there (and stored on SQLite).
    with api.client("admin") as c:
        refused(c.post("/api/v1/agents", json=pipeline("a\x00b")), "name")
        refused(c.post("/api/v1/agents/simple", json={"name": "s\x00"}), "name")
        agent = create_agent(c, pipeline(unique("nul")))
        url = f"/api/v1/agents/{agent['id']}"
        refused(c.patch(url, json={"name": "p\x00"}), "name")
        refused(c.put(url, json={"agent": {"name": "k\x00"}}), "agent.name")
        assert c.get(url).json() == agent
        refused(c.get("/api/v1/agents", params={"name_search": "a\x00b"}), "name_search")
        refused(c.get("/api/v1/agents/summary", params={"name_search": "a\x00b"}), "name_search")


def test_page_numbers_are_bounded(api):
    with api.client("admin") as c:
        for path in ("/api/v1/agents", "/api/v1/agents/summary"):
            for page in ("99999999999999999999", "9223372036854775807", "100001"):  # were 500s (integer overflow)
                refused(c.get(path, params={"page": page}), "page")
            last = c.get(path, params={"page": 100_000})
            assert last.status_code == 200 and last.json()["data"] == [], last.text


def test_a_mapped_agent_cannot_become_a_text_agent(api):
    from tests.test_api_phone import MAPPING, register

    with api.client("admin") as c:
        agent = create_agent(c, pipeline(unique("mapped")))
        url = f"/api/v1/agents/{agent['id']}"
        phone = register(c)
        assert c.post(MAPPING, json={"agent_id": agent["id"], "phone_number_id": phone["id"]}).status_code == 200
        message = refused(c.patch(url, json={"architecture": "text", "transcriber": None, "tts": None}),
                          "architecture")
        assert f"mapped to a phone number ({phone['number']})" in message
        assert "text agents cannot take phone calls" in message
        assert "mapped to a phone number" in refused(c.put(url, json={"agent": {"architecture": "text"}}),
                                                     "agent.architecture")
        assert c.get(url).json() == agent  # nothing changed
        assert c.get(f"{MAPPING}/{phone['id']}").json()["agent_id"] == agent["id"]
        # Unmapped, it may switch.
        assert c.delete(f"{MAPPING}/{phone['id']}").status_code == 200
        switched = c.put(url, json={"agent": {"architecture": "text"}})
        assert switched.status_code == 200 and switched.json()["architecture"] == "text", switched.text


def test_prompts_spoken_texts_and_max_tokens_have_maxima(api):
    with api.client("admin") as c:
        refused(c.post("/api/v1/agents", json=pipeline(unique(), system_prompt="p" * 100_001)), "system_prompt")
        refused(c.post("/api/v1/agents", json=pipeline(unique(), welcome_message="w" * 2_001)), "welcome_message")
        long_reply = {"provider": "scripted", "script": {"rules": [{"keywords": ["x"], "reply": "r" * 2_001}]}}
        refused(c.post("/api/v1/agents", json=pipeline(unique(), llm=long_reply)), "llm.script.rules.0.reply")
        long_fallback = {"provider": "scripted", "script": {"fallback": "f" * 2_001}}
        refused(c.post("/api/v1/agents", json=pipeline(unique(), llm=long_fallback)), "llm.script.fallback")
        absurd = {"provider": "scripted", "max_tokens": 99999999999999999999999}
        refused(c.post("/api/v1/agents", json=pipeline(unique(), llm=absurd)), "llm.max_tokens")
        at_limits = create_agent(c, pipeline(unique("limits"), system_prompt="p" * 100_000,
                                             welcome_message="w" * 2_000,
                                             llm={"provider": "scripted", "max_tokens": 128_000}))
        url = f"/api/v1/agents/{at_limits['id']}"
        refused(c.put(url, json={"agent_model_config": {"max_tokens": 128_001}}), "agent_model_config.max_tokens")
        refused(c.patch(url, json={"system_prompt": "p" * 100_001}), "system_prompt")
        assert c.get(url).json() == at_limits
