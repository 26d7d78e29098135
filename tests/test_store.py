"""The store on SQLite and on PostgreSQL: migrations at start-up, the queries calls rely on, and the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from config.agent import AgentConfig
from runtime.store import db as store_db
from runtime.store import repo
from tests.calls import converse
from tests.conftest import ROOT, start_server, stop_server

TABLES = {"workspaces", "agents", "phone_numbers", "calls", "transcript_entries", "chat_sessions", "chat_messages",
          "alembic_version"}


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'v.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres").url
    engine = store_db.create_engine(url)
    if request.param == "postgresql":  # a clean schema per test on the shared cluster
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    await store_db.migrate(engine)
    yield engine
    await engine.dispose()


async def test_migrations_create_the_schema_and_are_idempotent(database):
    await store_db.migrate(database)  # a second start-up changes nothing
    async with database.connect() as conn:
        tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
    assert TABLES <= tables
    # Head, whichever migration that is: each feature's own test checks what its migration adds.
    assert version == ScriptDirectory.from_config(store_db.alembic_config()).get_current_head()
    assert int(version) >= 4
    assert await store_db.ping(database)


async def test_call_lifecycle_queries(database):
    db = store_db.sessionmaker(database)
    ws = await repo.ensure_workspace(db, "default")
    assert (await repo.ensure_workspace(db, "default")).id == ws.id
    cfg = AgentConfig(name="a", system_prompt="p", transcriber={}, llm={}, tts={})
    agent = await repo.upsert_agent(db, ws.id, cfg)
    updated = await repo.upsert_agent(db, ws.id, cfg.model_copy(update={"system_prompt": "new"}))
    assert updated.id == agent.id and updated.config["system_prompt"] == "new"
    await repo.map_number(db, "+15550100000", agent)
    assert (await repo.agent_for_number(db, "+15550100000")).id == agent.id
    assert await repo.agent_for_number(db, "+15550100009") is None
    assert (await repo.find_agent(db, "a")).id == agent.id and (await repo.find_agent(db, agent.id)).id == agent.id

    call = await repo.create_call(db, workspace_id=ws.id, agent_id=agent.id, direction="inbound", status="ringing")
    assert await repo.claim_stream(db, call.id, "MZ1", "CA1")
    assert not await repo.claim_stream(db, call.id, "MZ2", "CA1"), "a second stream was admitted"
    await repo.add_transcript_entry(db, call.id, "user", "hello", 1.0, 2.0, False)
    await repo.add_transcript_entry(db, call.id, "assistant", "hi", 2.1, 3.0, True)
    assert [(t.role, t.interrupted) for t in await repo.transcript(db, call.id)] == [("user", False), ("assistant", True)]
    assert await repo.end_call(db, call.id, status="completed", reason="caller_hangup")
    assert not await repo.end_call(db, call.id, status="failed", reason="error_internal"), "closed twice"
    row = await repo.get_call(db, call.id)
    assert (row.status, row.disconnection_reason, row.stream_sid) == ("completed", "caller_hangup", "MZ1")
    assert not await repo.claim_stream(db, call.id, "MZ3", None), "an ended call admitted a stream"


async def test_a_final_carrier_status_closes_an_unstreamed_call_with_it(database):
    """The status callback's close: the carrier's status, the duration and the close are one transaction; a call
    that streamed only gains the duration (its session closes it)."""
    db = store_db.sessionmaker(database)
    ws = await repo.ensure_workspace(db, "default")
    busy = await repo.create_call(db, workspace_id=ws.id, direction="outbound", status="ringing")
    streamed = await repo.create_call(db, workspace_id=ws.id, direction="outbound", status="ringing")
    assert await repo.claim_stream(db, streamed.id, "MZ1", "CA2")
    closing = repo.Closing("completed", "dial_busy", "the line was busy", "system", unless_streamed=True)
    assert await repo.final_call_status(db, busy.id, "busy", closing, call_sid="CA1", duration_secs=0) == (True, True)
    assert await repo.final_call_status(db, busy.id, "busy", closing, call_sid="CA1") == (False, False)  # again
    assert await repo.final_call_status(db, streamed.id, "completed", closing, call_sid="CA2",
                                        duration_secs=7) == (True, False)
    row, other = await repo.get_call(db, busy.id), await repo.get_call(db, streamed.id)
    assert (row.status, row.disconnection_reason, row.carrier_status, row.duration_secs, row.twilio_call_sid) == (
        "completed", "dial_busy", "busy", 0, "CA1") and row.ended_at is not None
    assert (other.ended_at, other.carrier_status, other.duration_secs) == (None, "completed", 7)


async def test_calls_hold_carrier_addresses_up_to_255_characters(database):
    """Migration 0008: a SIP address (Twilio's From for a call from a SIP domain) fits calls.from_number and
    to_number; PostgreSQL's former varchar(32) refused it, and the incoming-call webhook answered 500."""
    db = store_db.sessionmaker(database)
    ws = await repo.ensure_workspace(db, "default")
    sip = "sip:+15551234567@" + "a" * 223 + ".sip.twilio.com"
    assert len(sip) == 255
    call = await repo.create_call(db, workspace_id=ws.id, direction="inbound", status="ringing", from_number=sip,
                                  to_number=sip)
    row = await repo.get_call(db, call.id)
    assert (row.from_number, row.to_number) == (sip, sip)
    if database.dialect.name == "postgresql":  # SQLite does not enforce VARCHAR lengths; 0008 leaves it as it is
        async with database.connect() as conn:
            lengths = await conn.run_sync(lambda c: {col["name"]: getattr(col["type"], "length", None)
                                                     for col in inspect(c).get_columns("calls")})
        assert lengths["from_number"] == lengths["to_number"] == 255


async def test_a_call_runs_end_to_end_on_postgresql(postgres, speech, tmp_path):
    conn = await asyncpg.connect(postgres.url.replace("+asyncpg", ""))
    await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    srv = start_server(tmp_path, auth_token=None, extra_env={"VOXLINE_DATABASE_URL": postgres.url})
    try:
        caller, _, _ = await converse(srv, speech["located"])
        call_id = caller.answer.parameters["call_id"]
        for _ in range(100):
            row = await conn.fetchrow("SELECT * FROM calls WHERE id = $1", call_id)
            if row["ended_at"] is not None:
                break
            await asyncio.sleep(0.05)
        assert row["disconnection_reason"] == "caller_hangup"
        turns = await conn.fetch("SELECT role, text FROM transcript_entries WHERE call_id = $1 ORDER BY id", call_id)
        assert [t["role"] for t in turns] == ["assistant", "user", "assistant"]
        assert "Main Street" in turns[-1]["text"]
        assert "postgresql" in srv.log()
    finally:
        stop_server(srv)
        await conn.close()


def test_numbers_add_maps_a_number_to_an_agent(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXLINE_")}
    env["VOXLINE_DATA_DIR"] = str(tmp_path)
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "runtime.cli", "numbers", "add", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    ok = run("+1 555 010 0042", "--agent", "demo")
    assert ok.returncode == 0, ok.stderr
    assert "+15550100042 → agent 'demo'" in ok.stdout
    unknown = run("+15550100043", "--agent", "nobody")
    assert unknown.returncode == 1 and "no agent named" in unknown.stderr
    invalid = run("12345", "--agent", "demo")
    assert invalid.returncode == 2 and "not a phone number" in invalid.stderr

    import sqlite3

    con = sqlite3.connect(tmp_path / "voxline.db")
    rows = con.execute(
        "SELECT p.number, a.name FROM phone_numbers p JOIN agents a ON a.id = p.agent_id ORDER BY p.number"
    ).fetchall()
    assert ("+15550100042", "demo") in rows and not any(n == "+15550100043" for n, _ in rows)
