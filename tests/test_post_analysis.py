"""Post-call analysis: the rules API (/api/v1/post-analysis/rules, an agent's attached rules), and analyses run by
the server once calls end: a real call through the scripted LLM, the OpenAI client against its emulator (valid
output, and invalid output retried once then recorded as an error), and calls left pending or half-done across a
restart."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update

from pipelines.providers import emulators
from runtime.store import db as store_db
from runtime.store import repo
from runtime.store.models import Call, Webhook, utcnow
from tests.api_helpers import create_agent, refused, unique
from tests.calls import converse
from tests.conftest import (
    AUTH_TOKEN,
    create_key_with_cli,
    server_env,
    start_server,
    stop_server,
)

RULES = "/api/v1/post-analysis/rules"
NO_SUCH_ID = "0123456789abcdef0123456789abcdef"


def field(name: str, type_: str = "string", **over) -> dict:
    return {"name": name, "type": type_, "description": f"The {name}.", **over}


def rule_body(name: str | None = None, **over) -> dict:
    return {"name": name or unique("rule"), "description": "Bookings.",
            "fields": [field("party_size", "number", keywords=["people"])], "summary": True, **over}


def create_rule(c: httpx.Client, **over) -> dict:
    r = c.post(RULES, json=rule_body(**over))
    assert r.status_code == 201, r.text
    return r.json()


def text_agent(c: httpx.Client) -> dict:
    return create_agent(c, {"name": unique("analysed"), "architecture": "text", "system_prompt": "p",
                            "llm": {"provider": "scripted"}})


def attached(c: httpx.Client, agent: dict) -> list[str]:
    r = c.get(f"/api/v1/agents/{agent['id']}/post-analysis/attached-rules")
    ids = c.get(f"/api/v1/agents/{agent['id']}/post-analysis/attached-rule-ids")
    assert r.status_code == 200 and ids.status_code == 200, (r.text, ids.text)
    assert [x["id"] for x in r.json()["data"]] == ids.json()["rule_ids"]
    return ids.json()["rule_ids"]


# --- the rules API, on SQLite and PostgreSQL ------------------------------------------------------------------------

def test_create_get_list_replace_and_delete(api):
    with api.client("developer") as c:
        body = rule_body(fields=[field("topic", "enum", choices=["hours", "menu"], required=True),
                                 field("booked", "boolean"), field("note")])
        created = c.post(RULES, json=body)
        assert created.status_code == 201, created.text
        rule = created.json()
        assert {k: rule[k] for k in ("name", "description", "summary")} == {k: body[k] for k in
                                                                             ("name", "description", "summary")}
        assert [f["name"] for f in rule["fields"]] == ["topic", "booked", "note"]
        assert rule["fields"][0]["choices"] == ["hours", "menu"] and rule["fields"][0]["required"] is True
        assert rule["fields"][1] == {**field("booked", "boolean"), "choices": None, "required": False, "keywords": []}
        assert rule["id"] and rule["created_at"].endswith(("Z", "+00:00"))
        assert c.get(f"{RULES}/{rule['id']}").json() == rule
        assert rule in c.get(RULES).json()["data"]

        replaced = c.put(f"{RULES}/{rule['id']}", json={"name": rule["name"], "summary": True})
        assert replaced.status_code == 200, replaced.text
        # A replacement, not a merge: the fields are gone and the description is back to its default.
        assert replaced.json()["fields"] == [] and replaced.json()["description"] == ""
        assert replaced.json()["id"] == rule["id"] and replaced.json()["created_at"] == rule["created_at"]

        gone = c.delete(f"{RULES}/{rule['id']}")
        assert gone.status_code == 200 and gone.json() == {"id": rule["id"], "deleted": True}
        assert c.get(f"{RULES}/{rule['id']}").status_code == 404
        assert c.delete(f"{RULES}/{rule['id']}").status_code == 404
        assert rule["id"] not in {r["id"] for r in c.get(RULES).json()["data"]}


def test_invalid_definitions_are_refused_naming_the_field(api):
    with api.client("admin") as c:
        refused(c.post(RULES, json=rule_body(fields=[field("when", "date")])), "fields.0.type")
        assert "choice" in refused(c.post(RULES, json=rule_body(fields=[field("topic", "enum")])),
                                   "fields.0.choices")
        refused(c.post(RULES, json=rule_body(fields=[field("topic", "enum", choices=[])])), "fields.0.choices")
        refused(c.post(RULES, json=rule_body(fields=[field("topic", "enum", choices=["a", "a"])])),
                "fields.0.choices")
        assert "enum" in refused(c.post(RULES, json=rule_body(fields=[field("n", "number", choices=["1"])])),
                                 "fields.0.choices")
        refused(c.post(RULES, json=rule_body(fields=[field("has space")])), "fields.0.name")
        refused(c.post(RULES, json=rule_body(fields=[field("x", description="")])), "fields.0.description")
        assert "twice" in refused(c.post(RULES, json=rule_body(fields=[field("x"), field("x")])), "fields")
        assert "summary" in refused(c.post(RULES, json=rule_body(fields=[], summary=False)), "fields")
        refused(c.post(RULES, json=rule_body(fields=[{**field("x"), "extra": 1}])), "fields.0.extra")
        refused(c.post(RULES, json={**rule_body(), "name": ""}), "name")
        refused(c.post(RULES, json={**rule_body(), "name": "   "}), "name")
        refused(c.post(RULES, json=rule_body(color="red")), "color")
        rule = create_rule(c)
        refused(c.put(f"{RULES}/{rule['id']}", json=rule_body(rule["name"], fields=[field("t", "enum")])),
                "fields.0.choices")
        assert c.get(f"{RULES}/{rule['id']}").json() == rule


def test_names_are_unique_per_workspace_and_duplicates_get_free_ones(api):
    name = unique()
    with api.client("admin") as c:
        rule = create_rule(c, name=name)
        clash = c.post(RULES, json=rule_body(name))
        assert clash.status_code == 409 and clash.json()["error"]["code"] == "conflict" and name in clash.text
        other = create_rule(c)
        assert c.put(f"{RULES}/{other['id']}", json=rule_body(name)).status_code == 409
        assert c.put(f"{RULES}/{rule['id']}", json=rule_body(name)).status_code == 200  # its own name is no clash

        copy = c.post(f"{RULES}/{rule['id']}/duplicate")
        again = c.post(f"{RULES}/{rule['id']}/duplicate")
        named = c.post(f"{RULES}/{rule['id']}/duplicate", json={"name": unique("named")})
        assert copy.status_code == again.status_code == named.status_code == 201, (copy.text, again.text)
        assert copy.json()["name"] == f"{name} (copy)" and again.json()["name"] == f"{name} (copy 2)"
        assert len({rule["id"], copy.json()["id"], again.json()["id"], named.json()["id"]}) == 4
        original = c.get(f"{RULES}/{rule['id']}").json()
        assert {k: copy.json()[k] for k in ("description", "fields", "summary")} == {
            k: original[k] for k in ("description", "fields", "summary")}
        assert c.post(f"{RULES}/{rule['id']}/duplicate", json={"name": name}).status_code == 409
    with api.client("other") as c:
        assert create_rule(c, name=name)["id"] != rule["id"]  # another workspace may use the same name


def test_another_workspace_sees_none_of_it(api):
    with api.client("admin") as c:
        rule = create_rule(c)
        agent = text_agent(c)
    with api.client("other") as c:
        mine = create_rule(c)
        my_agent = text_agent(c)
        for r in (c.get(f"{RULES}/{rule['id']}"), c.put(f"{RULES}/{rule['id']}", json=rule_body()),
                  c.delete(f"{RULES}/{rule['id']}"), c.post(f"{RULES}/{rule['id']}/duplicate"),
                  c.get(f"/api/v1/agents/{agent['id']}/post-analysis/attached-rules"),
                  c.get(f"/api/v1/agents/{agent['id']}/post-analysis/attached-rule-ids"),
                  c.put(f"/api/v1/agents/{agent['id']}/post-analysis/attached-rules", json={"rule_ids": []}),
                  c.put(f"/api/v1/agents/{my_agent['id']}/post-analysis/attached-rules",
                        json={"rule_ids": [rule["id"]]})):
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
        assert rule["id"] not in {r["id"] for r in c.get(RULES).json()["data"]}
        assert attached(c, my_agent) == []
        assert mine["id"] in {r["id"] for r in c.get(RULES).json()["data"]}
    with api.client("admin") as c:
        assert c.get(f"{RULES}/{rule['id']}").json() == rule


def test_attach_replace_detach(api):
    with api.client("admin") as c:
        agent = text_agent(c)
        first, second, third = create_rule(c), create_rule(c), create_rule(c)
        url = f"/api/v1/agents/{agent['id']}/post-analysis/attached-rules"
        assert attached(c, agent) == []
        r = c.put(url, json={"rule_ids": [second["id"], first["id"]]})
        assert r.status_code == 200 and [x["id"] for x in r.json()["data"]] == [second["id"], first["id"]], r.text
        assert r.json()["data"][0] == second
        # Kept rules keep their place; new ones follow.
        r = c.put(url, json={"rule_ids": [third["id"], first["id"]]})
        assert [x["id"] for x in r.json()["data"]] == [first["id"], third["id"]]
        assert attached(c, agent) == [first["id"], third["id"]]

        refused(c.put(url, json={"rule_ids": [first["id"], first["id"]]}), "rule_ids.1", "invalid_request")
        refused(c.put(url, json={"rules": [first["id"]]}), "rule_ids")
        assert c.put(url, json={"rule_ids": [NO_SUCH_ID]}).status_code == 404
        assert c.put(url, json={"rule_ids": ["not-an-id"]}).status_code == 404
        assert attached(c, agent) == [first["id"], third["id"]]  # refused changes change nothing

        assert c.delete(f"{RULES}/{first['id']}").status_code == 200  # deleting a rule detaches it
        assert attached(c, agent) == [third["id"]]
        assert c.put(url, json={"rule_ids": []}).json()["data"] == []
        assert attached(c, agent) == []
        assert c.get(f"/api/v1/agents/{NO_SUCH_ID}/post-analysis/attached-rules").status_code == 404
    with api.client(None) as c:
        assert c.get(RULES).status_code == 401


# --- analyses run by a server ---------------------------------------------------------------------------------------

OPENAI_RULES = {"rules": [
    {"keywords": ["lasagna"],
     "reply": json.dumps({"fields": {"dish": "lasagna", "party_size": 4, "vegetarian": True},
                          "summary": "A table for four, lasagna."})},
    {"keywords": ["calzone"], "reply": json.dumps({"fields": {"dish": "calzone", "party_size": "four"},
                                                   "summary": "A calzone."})},
    {"keywords": ["pizza"], "reply": "Sure! The caller wants a pizza."},
]}

OPENAI_AGENT = """
name: analysed-openai
architecture: text
system_prompt: A restaurant host.
llm: {provider: openai, model: gpt-4o-mini}
"""


class Analysed:
    """A server (SQLite) with the OpenAI emulator, an admin key, and the test's own connection to its database."""

    def __init__(self, base, twilio_api):
        self.base = base
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.openai = self.run(emulators.start("openai", rules=emulators.Rules.parse(OPENAI_RULES)))
        (base / "agents").mkdir(parents=True)
        (base / "agents" / "analysed_openai.yaml").write_text(OPENAI_AGENT)
        self.env = {"TWILIO_API_BASE_URL": twilio_api.url, "OPENAI_API_KEY": "sk-test",
                    "VOXLINE_OPENAI_BASE_URL": self.openai.url, "VOXLINE_ANALYSIS_POLL_SECS": "0.5"}
        self.server = start_server(base, auth_token=AUTH_TOKEN, extra_env=self.env)
        self.key = create_key_with_cli(server_env(base, self.env), "default", "admin")
        self.engine = store_db.create_engine(f"sqlite+aiosqlite:///{base / 'data' / 'voxline.db'}")
        self.db = store_db.sessionmaker(self.engine)
        self._agents: dict[str, dict] = {}

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers={"x-api-key": self.key}, timeout=30)

    def restart(self) -> None:
        stop_server(self.server)
        self.server = start_server(self.base, auth_token=AUTH_TOKEN, extra_env=self.env)

    def agents(self) -> dict[str, dict]:
        if not self._agents:  # (agents come from the YAML files: the same across restarts)
            with self.client() as c:
                self._agents = {a["name"]: a for a in c.get("/api/v1/agents").json()["data"]}
        return self._agents

    def attach(self, agent_name: str, *rules: dict) -> list[dict]:
        with self.client() as c:
            made = [create_rule(c, **r) for r in rules]
            r = c.put(f"/api/v1/agents/{self.agents()[agent_name]['id']}/post-analysis/attached-rules",
                      json={"rule_ids": [m["id"] for m in made]})
            assert r.status_code == 200, r.text
        return made

    def webhook(self) -> None:
        """A receiver of call.analyzed in workspace `default`, so that closing analyses queue their event."""
        async def add():
            async with self.db() as s:
                ws = (await repo.ensure_workspace(self.db, "default")).id
                s.add(Webhook(workspace_id=ws, url="http://127.0.0.1:9/hook", events=["call.analyzed"],
                              secret="whsec_test", active=True))
                await s.commit()
        self.run(add())

    def call(self, agent_name: str, turns: list[tuple[str, str]], *, close: bool = True) -> str:
        """A call of the agent with these turns, closed the way a call session closes it (repo.end_call)."""
        agent = self.agents()[agent_name]

        async def make() -> str:
            ws = (await repo.ensure_workspace(self.db, "default")).id
            call = await repo.create_call(self.db, workspace_id=ws, agent_id=agent["id"], direction="inbound",
                                          status="in-progress", started_at=utcnow())
            for i, (role, text) in enumerate(turns):
                await repo.add_transcript_entry(self.db, call.id, role, text, float(i), i + 0.5, False)
            if close:
                assert await repo.end_call(self.db, call.id, status="completed", reason="caller_hangup")
            return call.id
        return self.run(make())

    def row(self, call_id: str):
        return self.server.call_row(call_id)

    def wait_analysed(self, call_id: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.row(call_id)
            if row["analysis_status"] in ("done", "error"):
                return row
            time.sleep(0.1)
        raise AssertionError(f"call {call_id} not analysed: {dict(self.row(call_id))}\n{self.server.log()[-3000:]}")

    def analyzed_events(self, call_id: str) -> list[dict]:
        rows = self.server.query("SELECT payload FROM webhook_deliveries WHERE event_type = 'call.analyzed'")
        return [p for p in (json.loads(r["payload"]) for r in rows) if p["data"]["id"] == call_id]

    def openai_requests(self, word: str) -> list[dict]:
        return [r for r in self.openai.emulator.requests if word in r["messages"][1]["content"]]

    def close(self) -> None:
        stop_server(self.server)
        self.run(self.engine.dispose())
        self.run(self.openai.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, twilio_api):
    env = Analysed(tmp_path_factory.mktemp("analysed"), twilio_api)
    try:
        env.webhook()
        yield env
    finally:
        env.close()


async def test_analysis_runs_on_each_backend(api):
    """A call closed as a call session closes it (repo.end_call, here from the test) is analysed by the server."""
    with api.client("admin") as c:
        agent = text_agent(c)
        rule = create_rule(c, fields=[field("party_size", "number", keywords=["people"]), field("hours", "boolean")])
        assert c.put(f"/api/v1/agents/{agent['id']}/post-analysis/attached-rules",
                     json={"rule_ids": [rule["id"]]}).status_code == 200

    async def run():
        engine = store_db.create_engine(api.database_url)
        db = store_db.sessionmaker(engine)
        try:
            ws = (await repo.ensure_workspace(db, "default")).id
            call = await repo.create_call(db, workspace_id=ws, agent_id=agent["id"], direction="inbound",
                                          status="in-progress", started_at=utcnow())
            await repo.add_transcript_entry(db, call.id, "user", "A table for 3 people. When are you open?", 0, 1,
                                            False)
            await repo.add_transcript_entry(db, call.id, "assistant", "From noon.", 1, 2, False)
            assert await repo.end_call(db, call.id, status="completed", reason="caller_hangup")
            assert (await repo.get_call(db, call.id)).analysis_status == "pending"
            deadline = time.monotonic() + 15  # the server is not woken from here: its poll finds it
            while (found := await repo.get_call(db, call.id)).analysis_status not in ("done", "error"):
                assert time.monotonic() < deadline, found.analysis_status
                await asyncio.sleep(0.2)
            return found
        finally:
            await engine.dispose()

    found = await run()
    assert found.analysis_status == "done" and found.analysis_error is None, found.analysis_error
    assert found.analysis["fields"] == {"party_size": 3, "hours": False} and found.analysis["rules"] == [rule["id"]]
    assert found.analysis["summary"] == "Caller: A table for 3 people. When are you open? Agent: From noon."
    assert found.analysis_claimed_at is not None


async def test_a_real_call_is_analysed_by_the_scripted_extractor(analysed, speech):
    rule, = analysed.attach("demo", {"fields": [
        field("party_size", "number", keywords=["people", "table"], required=True),
        field("wants_booking", "boolean", keywords=["book", "table", "reservation"]),
        field("asked_location", "boolean"),
        field("topic", "enum", choices=["opening hours", "book table", "menu"]),
        field("request", keywords=["like"]),
    ]})
    caller, _, _ = await converse(analysed.server, speech["table"])
    call_id = caller.answer.parameters["call_id"]
    row = await asyncio.to_thread(analysed.wait_analysed, call_id)
    assert row["analysis_status"] == "done" and row["analysis_error"] is None, dict(row)
    analysis = json.loads(row["analysis"])
    turns = analysed.server.turns(call_id)
    said = next(t["text"] for t in turns if t["role"] == "user")
    assert "table" in said.lower(), said
    request = analysis["fields"].pop("request")
    # Whisper hears "a table for two people" as that, or now and then as "table 42 people": the number is whatever
    # the transcript says.
    digits = re.search(r"\d+", said)
    party = int(digits.group()) if digits else 2
    assert re.search(r"\btwo\b", said, re.IGNORECASE) or digits, said
    assert analysis["fields"] == {"party_size": party, "wants_booking": True, "asked_location": False,
                                  "topic": "book table"}, (analysis, said)
    assert "like" in request.lower() and request in said, (request, said)
    analysis["fields"]["request"] = request
    last_reply = [t["text"] for t in turns if t["role"] == "assistant"][-1]
    assert analysis["summary"] == f"Caller: {said} Agent: {last_reply}"
    assert analysis["rules"] == [rule["id"]] and analysis["provider"] == "scripted"
    events = analysed.analyzed_events(call_id)
    assert len(events) == 1 and events[0]["type"] == "call.analyzed"
    assert events[0]["data"]["analysis"] == analysis and events[0]["data"]["analysis_status"] == "done"


def test_openai_fills_the_fields_and_the_summary(analysed):
    rule, other = analysed.attach("analysed-openai", {
        "description": "What the caller ordered.", "summary": False,
        "fields": [field("dish", required=True, keywords=["order", "eat"]),
                   field("party_size", "number")]}, {
        "summary": False, "fields": [field("vegetarian", "boolean"), field("dish", "number")]})  # the first `dish` wins
    call_id = analysed.call("analysed-openai", [("assistant", "Hello, Luigi's."),
                                                ("user", "Four of us want the lasagna, all vegetarian.")])
    row = analysed.wait_analysed(call_id)
    assert row["analysis_status"] == "done", dict(row)
    analysis = json.loads(row["analysis"])
    assert analysis["fields"] == {"dish": "lasagna", "party_size": 4, "vegetarian": True}
    assert "summary" not in analysis  # neither rule asked for one (the emulator's is dropped)
    assert analysis["rules"] == [rule["id"], other["id"]]
    assert analysis["provider"] == "openai" and analysis["model"] == "gpt-4o-mini"
    request, = analysed.openai_requests("lasagna")
    assert request["model"] == "gpt-4o-mini" and request["response_format"] == {"type": "json_object"}
    assert "Caller: Four of us want the lasagna" in request["messages"][1]["content"]
    assert "What the caller ordered." in request["messages"][0]["content"]
    schema_fields = json.loads(request["messages"][0]["content"].splitlines()[2])["$defs"]["AnalysisFields"]
    assert schema_fields["properties"]["dish"]["type"] == "string" and schema_fields["required"] == ["dish"]
    assert analysed.analyzed_events(call_id)[0]["data"]["analysis"] == analysis


def test_invalid_output_is_retried_once_then_recorded_as_an_error(analysed):
    analysed.attach("analysed-openai", {"summary": True, "fields": [
        field("dish", required=True), field("party_size", "number"), field("vegetarian", "boolean")]})
    wrong_types = analysed.call("analysed-openai", [("user", "One calzone please.")])
    prose = analysed.call("analysed-openai", [("user", "A pizza please.")])
    for call_id, word, first in ((wrong_types, "calzone", "fields.party_size"), (prose, "pizza", "not a JSON")):
        row = analysed.wait_analysed(call_id)
        assert row["analysis_status"] == "error" and row["analysis"] is None, dict(row)
        assert "invalid output twice" in row["analysis_error"] and first in row["analysis_error"], row["analysis_error"]
        asked = analysed.openai_requests(word)
        assert len(asked) == 2, asked  # the first answer, then once more with what was wrong with it
        assert asked[1]["messages"][:2] == asked[0]["messages"]
        assert asked[1]["messages"][-1]["role"] == "user" and first in asked[1]["messages"][-1]["content"]
        event, = analysed.analyzed_events(call_id)
        assert event["data"]["analysis_status"] == "error" and event["data"]["analysis_error"] == row["analysis_error"]


def test_a_required_field_the_scripted_extractor_cannot_fill_is_an_error(analysed):
    analysed.attach("chat-only", {"fields": [field("licence_plate", required=True)]})
    call_id = analysed.call("chat-only", [("user", "Hello there."), ("assistant", "Hi.")])
    row = analysed.wait_analysed(call_id)
    assert row["analysis_status"] == "error" and "licence_plate" in row["analysis_error"], dict(row)


def test_calls_left_pending_or_half_done_are_analysed_after_a_restart(analysed):
    analysed.attach("chat-only", {"fields": [field("licence_plate", required=True)]})
    stop_server(analysed.server)
    # Closed while no server runs: marked pending, nobody to wake.
    pending = analysed.call("chat-only", [("user", "My licence plate is ABC.")])
    # Claimed by a server that died mid-analysis an hour ago, and one claimed just now by a live one elsewhere.
    stale, live = (analysed.call("chat-only", [("user", "Plate licence XYZ.")], close=False) for _ in range(2))
    for call_id, claimed in ((stale, utcnow() - timedelta(hours=1)), (live, utcnow())):
        async def mark(call_id=call_id, claimed=claimed):
            assert await repo.end_call(analysed.db, call_id, status="completed", reason="caller_hangup")
            async with analysed.db() as s:
                await s.execute(update(Call).where(Call.id == call_id)
                                .values(analysis_status="running", analysis_claimed_at=claimed))
                await s.commit()
        analysed.run(mark())
    assert analysed.row(pending)["analysis_status"] == "pending"
    analysed.restart()
    for call_id in (pending, stale):
        row = analysed.wait_analysed(call_id)
        assert row["analysis_status"] == "done", dict(row)
        assert json.loads(row["analysis"])["fields"]["licence_plate"].lower().startswith(("my licence", "plate"))
    time.sleep(1.5)  # three polls: the live claim is left alone
    assert analysed.row(live)["analysis_status"] == "running" and analysed.row(live)["analysis"] is None
