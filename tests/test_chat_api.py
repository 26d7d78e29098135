"""The chat API (/api/v1/chat) against a real server: SSE turns with a scripted agent, a tool call round trip through
a real HTTP tool on loopback, history in the database (across a second server process), one turn at a time,
closed sessions, workspaces and validation; and the store's migration 0003."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from runtime.store import db as store_db
from runtime.store import repo
from tests.api_helpers import chat_turn, create_agent, refused, unique
from tests.conftest import free_port, start_api_server, start_server, stop_server
from tests.tool_server import ToolServer

SESSIONS = "/api/v1/chat/sessions"
TURN = "/api/v1/chat/turn"
NO_SUCH_ID = "0123456789abcdef0123456789abcdef"
APOLOGY = "I'm sorry, I couldn't complete that just now."


@pytest.fixture(scope="module")
def tool_server():
    with ToolServer() as srv:
        yield srv


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def chat(request, tmp_path_factory):
    """A server whose tools and agents' own LLM endpoints may reach loopback (where the test's tool server and
    dead endpoint are), with an OpenAI key set so a broken OpenAI endpoint fails at request time."""
    pg = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    srv = start_api_server(tmp_path_factory.mktemp(f"chat-{request.param}"), request.param,
                           {"VOXLINE_RATE_LIMIT_PER_MINUTE": "100000", "VOXLINE_TOOLS_ALLOW_PRIVATE_NETWORKS": "true",
                            "VOXLINE_PROVIDERS_ALLOW_PRIVATE_NETWORKS": "true", "OPENAI_API_KEY": "sk-test-0000"}, pg)
    yield srv
    stop_server(srv.server)


# --- helpers --------------------------------------------------------------------------------------------------------

turn = chat_turn


def names(events) -> list[str]:
    """Event names with runs of message_delta collapsed, so the test does not depend on how text is chunked."""
    out: list[str] = []
    for name, _ in events:
        if not (name == "message_delta" and out and out[-1] == name):
            out.append(name)
    return out


def said(events) -> str:
    return "".join(data["text"] for name, data in events if name == "message_delta")


def scripted_agent(c: httpx.Client, rules: list[dict], **over) -> dict:
    return create_agent(c, {"name": unique("chat-agent"), "architecture": "text", "system_prompt": "You take bookings.",
                            "llm": {"provider": "scripted", "script": {"rules": rules, "fallback": "Pardon?"}}, **over})


def new_session(c: httpx.Client, agent: dict) -> dict:
    r = c.post(SESSIONS, json={"agent_id": agent["id"]})
    assert r.status_code == 201, r.text
    return r.json()


def http_tool(c: httpx.Client, agent: dict, url: str, config: dict | None = None, **over) -> dict:
    r = c.post("/api/v1/tool-endpoint-defs", json={"name": unique("tool"), "description": "A tool.", "url": url, **over})
    assert r.status_code == 201, r.text
    tool = r.json()
    attach = c.post(f"/api/v1/agents/{agent['id']}/tools", json=[{"tool_id": tool["id"], "config": config or {}}])
    assert attach.status_code == 200, attach.text
    return tool


def history(c: httpx.Client, session_id: str) -> list[dict]:
    r = c.get(f"{SESSIONS}/{session_id}")
    assert r.status_code == 200, r.text
    return r.json()["messages"]


# --- turns ----------------------------------------------------------------------------------------------------------

def test_a_turn_streams_the_reply_then_done_and_is_stored(chat):
    with chat.client() as c:
        agent = scripted_agent(c, [{"keywords": ["hello"], "reply": "Hi there, welcome to Luigi's."}])
        session = new_session(c, agent)
        assert session["status"] == "active" and session["agent_id"] == agent["id"] and session["closed_at"] is None
        events = turn(c, session["id"], "Hello!")
        assert names(events) == ["message_delta", "done"], events
        assert said(events) == "Hi there, welcome to Luigi's."
        assert events[-1][1] == {"session_id": session["id"], "text": "Hi there, welcome to Luigi's."}
        second = turn(c, session["id"], "something else")
        assert said(second) == "Pardon?"
        messages = history(c, session["id"])
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "Hello!"), ("assistant", "Hi there, welcome to Luigi's."),
        ("user", "something else"), ("assistant", "Pardon?")]
    assert all(m["tool"] is None and m["created_at"].endswith(("Z", "+00:00")) for m in messages)
    assert [m["created_at"] for m in messages] == sorted(m["created_at"] for m in messages)


def test_a_tool_call_round_trip_through_a_real_http_tool(chat, tool_server):
    with chat.client() as c:
        agent = scripted_agent(c, [])
        tool = http_tool(c, agent, f"{tool_server.url}/text", method="GET",
                         parameters={"type": "object", "properties": {"party": {"type": "integer"}},
                                     "required": ["party"]})
        r = c.patch(f"/api/v1/agents/{agent['id']}", json={"llm": {"provider": "scripted", "script": {"rules": [
            {"keywords": ["book"], "tool": tool["name"], "arguments": {"party": 2}, "reply": "Booked: {result}."}]}}})
        assert r.status_code == 200, r.text
        session = new_session(c, agent)
        before = len(tool_server.requests)
        events = turn(c, session["id"], "Can I book a table?")
        assert names(events) == ["tool_executing", "tool_done", "message_delta", "done"], events
        executing, done = events[0][1], events[1][1]
        assert executing["name"] == tool["name"] and executing["arguments"] == {"party": 2}
        assert done["tool_call_id"] == executing["tool_call_id"] and done["error"] is None
        assert done["result"] == {"status": 200, "result": "a table for two at 7 pm"}
        assert isinstance(done["duration_ms"], int)
        assert said(events) == "Booked: a table for two at 7 pm."
        assert [(q["method"], q["path"], q["query"]) for q in tool_server.requests[before:]] == [
            ("GET", "/text", {"party": "2"})]
        messages = history(c, session["id"])
    assert [m["role"] for m in messages] == ["user", "tool", "assistant"]
    stored = messages[1]
    assert stored["content"] == "a table for two at 7 pm"
    assert stored["tool"] == {"call_id": executing["tool_call_id"], "name": tool["name"], "arguments": {"party": 2},
                              "result": {"status": 200, "result": "a table for two at 7 pm"}, "error": None}


def test_the_agents_attachment_settings_reach_the_tool(chat, tool_server):
    """A fixed argument and a per-agent key, set when the tool was attached, go out with the LLM's call."""
    with chat.client() as c:
        agent = scripted_agent(c, [])
        tool = http_tool(c, agent, f"{tool_server.url}/echo", headers={"X-Api-Key": "shared"},
                         parameters={"type": "object", "required": ["party", "site"], "additionalProperties": False,
                                     "properties": {"party": {"type": "integer"}, "site": {"type": "string"}}},
                         config={"arguments": {"site": "soho"}, "headers": {"X-Api-Key": "soho-key"}})
        r = c.patch(f"/api/v1/agents/{agent['id']}", json={"llm": {"provider": "scripted", "script": {"rules": [
            {"keywords": ["book"], "tool": tool["name"], "arguments": {"party": 2}, "reply": "Done."}]}}})
        assert r.status_code == 200, r.text
        session = new_session(c, agent)
        before = len(tool_server.requests)
        events = turn(c, session["id"], "Can I book a table?")
        assert names(events) == ["tool_executing", "tool_done", "message_delta", "done"], events
        assert events[1][1]["error"] is None, events
        sent = tool_server.requests[before:]
        assert [(q["method"], q["body"]) for q in sent] == [("POST", {"party": 2, "site": "soho"})]
        assert {k.lower(): v for k, v in sent[0]["headers"].items()}["x-api-key"] == "soho-key"
        stored = [m for m in history(c, session["id"]) if m["role"] == "tool"]
    assert stored[0]["tool"]["arguments"] == {"party": 2, "site": "soho"}


def test_a_failing_tool_is_reported_and_the_conversation_goes_on(chat, tool_server):
    with chat.client() as c:
        agent = scripted_agent(c, [])
        tool = http_tool(c, agent, f"{tool_server.url}/fail")
        c.patch(f"/api/v1/agents/{agent['id']}", json={"llm": {"provider": "scripted", "script": {"rules": [
            {"keywords": ["menu"], "tool": tool["name"], "reply": "Here it is: {result}"},
            {"keywords": ["thanks"], "reply": "You're welcome."}]}}})
        session = new_session(c, agent)
        events = turn(c, session["id"], "What's on the menu?")
        assert names(events) == ["tool_executing", "tool_done", "message_delta", "done"], events
        assert events[1][1]["error"] == "HTTP 500 Internal Server Error"
        assert events[1][1]["result"]["error"]["code"] == "http_error"
        assert said(events) == APOLOGY
        assert said(turn(c, session["id"], "thanks")) == "You're welcome."
        stored = [m for m in history(c, session["id"]) if m["role"] == "tool"]
    assert len(stored) == 1 and stored[0]["tool"]["error"] == "HTTP 500 Internal Server Error"


def test_a_second_turn_while_one_runs_is_refused(chat, tool_server):
    with chat.client() as c:
        agent = scripted_agent(c, [])
        tool = http_tool(c, agent, f"{tool_server.url}/slow?secs=2", method="GET")
        c.patch(f"/api/v1/agents/{agent['id']}", json={"llm": {"provider": "scripted", "script": {"rules": [
            {"keywords": ["wait"], "tool": tool["name"], "reply": "Done: {result}"}]}}})
        session = new_session(c, agent)
        with c.stream("POST", TURN, json={"session_id": session["id"], "message": "please wait"}) as first:
            assert first.status_code == 200
            lines = first.iter_lines()
            assert next(line for line in lines if line.startswith("event: ")) == "event: tool_executing"
            second = c.post(TURN, json={"session_id": session["id"], "message": "hello?"})
            assert second.status_code == 409, second.text
            assert second.json()["error"]["code"] == "turn_in_progress"
            rest = "\n".join(lines)
        assert "event: done" in rest and "Done: late" in rest
        assert names(turn(c, session["id"], "hello?")) == ["message_delta", "done"]  # free again at once


def test_an_llm_failure_is_an_error_event_and_the_session_stays_usable(chat):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with chat.client() as c:
        agent = create_agent(c, {"name": unique("chat-openai"), "architecture": "text", "system_prompt": "p",
                                 "llm": {"provider": "openai", "model": "gpt-4o-mini", "base_url": dead}})
        session = new_session(c, agent)
        events = turn(c, session["id"], "hello")
        assert events[-1][0] == "error", events
        assert events[-1][1]["code"] == "llm_error" and events[-1][1]["message"]
        r = c.patch(f"/api/v1/agents/{agent['id']}", json={"llm": {
            "provider": "scripted", "model": None, "base_url": None,
            "script": {"rules": [{"keywords": ["hello"], "reply": "Back again."}]}}})
        assert r.status_code == 200, r.text
        assert said(turn(c, session["id"], "hello")) == "Back again."
        assert [m["role"] for m in history(c, session["id"])] == ["user", "user", "assistant"]


def test_history_survives_in_the_database_for_another_server_process(chat, tmp_path):
    with chat.client() as c:
        agent = scripted_agent(c, [{"keywords": ["one"], "reply": "First."}, {"keywords": ["two"], "reply": "Second."}])
        session = new_session(c, agent)
        turn(c, session["id"], "one")
    env = {"VOXLINE_DATABASE_URL": chat.database_url, "VOXLINE_DATA_DIR": str(chat.server.data_dir)}
    other = start_server(tmp_path, auth_token=None, extra_env=env)
    try:
        with httpx.Client(base_url=other.url, headers={"x-api-key": chat.admin_key}, timeout=30) as c2:
            assert [m["content"] for m in history(c2, session["id"])] == ["one", "First."]
            assert said(turn(c2, session["id"], "two")) == "Second."
    finally:
        stop_server(other)
    with chat.client() as c:
        assert [m["content"] for m in history(c, session["id"])] == ["one", "First.", "two", "Second."]


# --- sessions -------------------------------------------------------------------------------------------------------

def test_a_closed_session_keeps_its_history_and_refuses_turns(chat):
    with chat.client() as c:
        agent = scripted_agent(c, [{"keywords": ["hi"], "reply": "Hello."}])
        session = new_session(c, agent)
        turn(c, session["id"], "hi")
        closed = c.delete(f"{SESSIONS}/{session['id']}")
        assert closed.status_code == 200, closed.text
        assert closed.json()["status"] == "closed" and closed.json()["closed_at"]
        r = c.post(TURN, json={"session_id": session["id"], "message": "hi again"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "session_closed", r.text
        got = c.get(f"{SESSIONS}/{session['id']}").json()
        assert got["status"] == "closed" and [m["content"] for m in got["messages"]] == ["hi", "Hello."]
        assert c.delete(f"{SESSIONS}/{session['id']}").json()["closed_at"] == closed.json()["closed_at"]
        # Upivia's form of the same.
        other = new_session(c, agent)
        r = c.delete(SESSIONS, params={"session_id": other["id"]})
        assert r.status_code == 200 and r.json()["status"] == "closed"
        listed = c.get(SESSIONS, params={"agent_id": agent["id"]}).json()["data"]
        assert {s["id"]: s["status"] for s in listed} == {session["id"]: "closed", other["id"]: "closed"}


def test_any_architecture_may_be_chatted_with(chat):
    with chat.client() as c:
        phone_agent = create_agent(c, {"name": unique("phone"), "system_prompt": "p", "transcriber": {}, "tts": {},
                                       "llm": {"provider": "scripted", "script": {"fallback": "Phone agent here."}}})
        assert said(turn(c, new_session(c, phone_agent)["id"], "hi")) == "Phone agent here."


def test_an_agent_without_an_llm_is_refused_a_session(chat):
    # A realtime agent has no `llm`: every turn of its session was an SSE `no_llm` error; now the session is refused.
    with chat.client() as c:
        agent = create_agent(c, {"name": unique("realtime"), "architecture": "realtime", "system_prompt": "p",
                                 "realtime": {"provider": "openai"}})
        message = refused(c.post(SESSIONS, json={"agent_id": agent["id"]}), "agent_id", code="invalid_request")
        assert message == f"agent_id: agent {agent['name']!r} has no `llm` section to chat with"
        assert all(s["agent_id"] != agent["id"] for s in c.get(SESSIONS).json()["data"])


def test_other_workspaces_get_404(chat):
    with chat.client() as c, chat.client("other") as o:
        agent = scripted_agent(c, [])
        session = new_session(c, agent)
        for r in (o.post(SESSIONS, json={"agent_id": agent["id"]}), o.get(f"{SESSIONS}/{session['id']}"),
                  o.delete(f"{SESSIONS}/{session['id']}"), o.delete(SESSIONS, params={"session_id": session["id"]}),
                  o.post(TURN, json={"session_id": session["id"], "message": "hi"}),
                  c.get(f"{SESSIONS}/{NO_SUCH_ID}"), c.post(SESSIONS, json={"agent_id": NO_SUCH_ID}),
                  c.post(TURN, json={"session_id": NO_SUCH_ID, "message": "hi"}), c.get(f"{SESSIONS}/x")):
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (r.request.url, r.text)
        assert session["id"] not in {s["id"] for s in o.get(SESSIONS).json()["data"]}
        assert c.get(f"{SESSIONS}/{session['id']}").json()["status"] == "active"


def test_invalid_bodies_are_refused_naming_the_field(chat):
    with chat.client() as c:
        session = new_session(c, scripted_agent(c, []))
        sid = session["id"]
        refused(c.post(TURN, json={"session_id": sid}), "message")
        refused(c.post(TURN, json={"session_id": sid, "message": ""}), "message")
        refused(c.post(TURN, json={"session_id": sid, "message": "   "}), "message")
        refused(c.post(TURN, json={"session_id": sid, "message": "x" * 16001}), "message")
        refused(c.post(TURN, json={"session_id": sid, "message": "nul\x00"}), "message")
        refused(c.post(TURN, json={"session_id": sid, "message": "hi", "stream": False}), "stream")
        refused(c.post(TURN, json={"message": "hi"}), "session_id")
        refused(c.post(SESSIONS, json={}), "agent_id")
        refused(c.post(SESSIONS, json={"agent_id": "a", "x": 1}), "x")
        assert c.post(TURN, content=b"not json", headers={"content-type": "application/json"}).status_code == 400
        assert history(c, sid) == []


def test_chat_routes_need_a_key_and_are_documented(chat):
    with chat.client(None) as anon:
        for method, path in (("POST", SESSIONS), ("GET", SESSIONS), ("GET", f"{SESSIONS}/{NO_SUCH_ID}"),
                             ("DELETE", f"{SESSIONS}/{NO_SUCH_ID}"), ("DELETE", SESSIONS), ("POST", TURN)):
            r = anon.request(method, path, json={} if method == "POST" else None)
            assert r.status_code == 401, (method, path, r.text)
        spec = anon.get("/openapi.json").json()
    turn_op = spec["paths"][TURN]["post"]
    assert {"200", "401", "404", "409"} <= set(turn_op["responses"]) and "text/event-stream" in turn_op["description"]


# --- the store ------------------------------------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'v.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres").url
    engine = store_db.create_engine(url)
    if request.param == "postgresql":
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    await store_db.migrate(engine)
    yield engine
    await engine.dispose()


def _columns(conn, table: str) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns(table)}


async def test_migration_0003_adds_tool_columns_and_chat_tables_and_downgrades(database):
    async with database.connect() as conn:
        head = ScriptDirectory.from_config(store_db.alembic_config()).get_current_head()
        assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one() == head
        cols = await conn.run_sync(lambda c: {t: _columns(c, t) for t in
                                              ("transcript_entries", "calls", "chat_sessions", "chat_messages")})
    assert {"tool_name", "tool_call_id", "tool_arguments", "tool_result", "tool_error"} <= cols["transcript_entries"]
    assert "ended_by" in cols["calls"] and {"busy_until", "closed_at"} <= cols["chat_sessions"]

    def down_and_up(connection) -> None:
        cfg = store_db.alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, "0002")
        assert "chat_sessions" not in inspect(connection).get_table_names()
        assert "tool_name" not in _columns(connection, "transcript_entries")
        command.upgrade(cfg, "head")

    async with database.begin() as conn:
        await conn.run_sync(down_and_up)

    db = store_db.sessionmaker(database)
    ws = await repo.ensure_workspace(db, "default")
    call = await repo.create_call(db, workspace_id=ws.id, direction="inbound", status="in-progress")
    await repo.add_transcript_entry(db, call.id, "user", "book a table", 0.5, 1.5, False)
    await repo.add_tool_entry(db, call.id, name="book", tool_call_id="c1", arguments={"party": 2},
                              result={"status": 200, "result": "ok"}, error=None, start_secs=1.6, end_secs=1.9)
    await repo.add_tool_entry(db, call.id, name="menu", tool_call_id="c2", arguments={},
                              result={"error": {"code": "timeout", "message": "slow"}}, error="slow",
                              start_secs=2.0, end_secs=3.0)
    entries = await repo.transcript(db, call.id)
    assert [(e.role, e.tool_name, e.tool_error) for e in entries] == [
        ("user", None, None), ("tool", "book", None), ("tool", "menu", "slow")]
    assert entries[1].tool_arguments == {"party": 2} and entries[1].tool_result == {"status": 200, "result": "ok"}


def test_the_tool_server_helper_is_threaded(tool_server):
    # The concurrency test holds one slow request open while others are served.
    slow = threading.Thread(target=lambda: httpx.get(f"{tool_server.url}/slow?secs=1", timeout=5))
    slow.start()
    start = time.monotonic()
    assert httpx.get(f"{tool_server.url}/text", timeout=5).status_code == 200
    assert time.monotonic() - start < 0.5
    slow.join()
