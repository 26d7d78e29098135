"""What an error says and what it logs: an invalid JSON body named as such, and a server error logged once, without
the row values of the statement that failed."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import text

from runtime.store import db as store_db


def test_an_invalid_json_body_is_named_with_where_it_breaks(api):
    with api.client("admin") as c:
        r = c.post("/api/v1/api-keys", content=b'{"name": "a",\n "role" "admin"}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error" and error["status"] == 400
    assert error["details"] == [{"field": "body",
                                 "message": "invalid JSON: Expecting ':' delimiter at line 2, column 9 (char 22)"}]
    assert error["message"] == "body: invalid JSON: Expecting ':' delimiter at line 2, column 9 (char 22)"


async def _refuse_inserts_of_keys_named(api, name: str) -> None:
    """A trigger that fails the INSERT of one key (by its name): a server error whose statement binds that name and
    the new key's hash, on either backend."""
    engine = store_db.create_engine(api.database_url)
    try:
        async with engine.begin() as conn:
            if api.backend == "sqlite":
                await conn.execute(text(
                    f"CREATE TRIGGER refuse_{name.replace('-', '_')} BEFORE INSERT ON api_keys "
                    f"WHEN NEW.name = '{name}' BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"))
            else:
                await conn.execute(text(
                    "CREATE OR REPLACE FUNCTION refuse_test_key() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'refused by the test trigger'; END $$ LANGUAGE plpgsql"))
                await conn.execute(text(
                    f"CREATE TRIGGER refuse_{name.replace('-', '_')} BEFORE INSERT ON api_keys FOR EACH ROW "
                    f"WHEN (NEW.name = '{name}') EXECUTE FUNCTION refuse_test_key()"))
    finally:
        await engine.dispose()


async def test_a_server_error_is_logged_once_without_the_statements_values(api):
    name = f"leak-{uuid.uuid4().hex[:12]}"
    await _refuse_inserts_of_keys_named(api, name)
    before = len(api.server.log())
    with api.client("admin") as c:
        r = c.post("/api/v1/api-keys", json={"name": name})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error", r.text
    deadline = time.monotonic() + 5
    while "refused by the test trigger" not in api.server.log()[before:] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # uvicorn's own report of the exception, if it makes one, comes right after ours
    logged = api.server.log()[before:]
    assert logged.count("POST /api/v1/api-keys: unhandled error") == 1, logged
    assert "Exception in ASGI application" not in logged, logged
    # The statement is named, its bound values (the key's name and hash) are not.
    assert "INSERT INTO api_keys" in logged and "SQL parameters hidden" in logged, logged
    assert name not in logged, logged
