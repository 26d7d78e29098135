"""Cross-cutting API behaviour: idempotent creates, rate limits, body size, unknown routes, the error body."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import start_api_server, start_server, stop_server


def test_idempotent_create_replays_the_first_response(api):
    key = f"idem-{uuid.uuid4()}"
    with api.client("admin") as c:
        first = c.post("/api/v1/api-keys", json={"name": "idem"}, headers={"Idempotency-Key": key})
        retry = c.post("/api/v1/api-keys", json={"name": "idem"}, headers={"Idempotency-Key": key})
        listed = [k for k in c.get("/api/v1/api-keys").json()["data"] if k["id"] == first.json()["id"]]
        conflict = c.post("/api/v1/api-keys", json={"name": "different"}, headers={"Idempotency-Key": key})
        fresh = c.post("/api/v1/api-keys", json={"name": "idem"}, headers={"Idempotency-Key": key + "-2"})
    assert first.status_code == retry.status_code == 201
    assert retry.headers.get("idempotent-replayed") == "true"
    assert retry.json()["id"] == first.json()["id"] and len(listed) == 1, "created twice"
    # The secret is shown once: the stored replay carries everything else.
    assert first.json()["api_key"] and retry.json()["api_key"] is None
    assert {k: v for k, v in retry.json().items() if k != "api_key"} == \
           {k: v for k, v in first.json().items() if k != "api_key"}
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"
    assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]


def test_idempotency_keys_are_scoped_to_the_api_key(api):
    key = f"idem-{uuid.uuid4()}"
    with api.client("admin") as c:
        mine = c.post("/api/v1/api-keys", json={"name": "a"}, headers={"Idempotency-Key": key})
    with api.client("other") as c:
        theirs = c.post("/api/v1/api-keys", json={"name": "a"}, headers={"Idempotency-Key": key})
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


def test_unknown_routes_and_methods_use_the_error_body(api):
    with api.client("admin") as c:
        missing = c.get("/api/v1/no-such-thing")
        wrong_method = c.put("/api/v1/me")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["status"] == 405


def test_rate_limit_headers_on_every_response(api):
    with api.client("admin") as c:
        ok = c.get("/api/v1/me")
        refused = c.get("/api/v1/me", headers={"x-api-key": "vxl_nope"})
    for r in (ok, refused):
        assert int(r.headers["X-RateLimit-Limit"]) == 100000
        assert 0 <= int(r.headers["X-RateLimit-Remaining"]) < 100000
        assert int(r.headers["X-RateLimit-Reset"]) > 0


@pytest.fixture(scope="module")
def strict_api(tmp_path_factory):
    srv = start_api_server(tmp_path_factory.mktemp("strict"), "sqlite",
                           {"VOXLINE_RATE_LIMIT_PER_MINUTE": "20", "VOXLINE_MAX_BODY_BYTES": "4096"})
    yield srv
    stop_server(srv.server)


def test_rate_limit_429_per_key(strict_api):
    with strict_api.client("developer") as c:
        statuses = [c.get("/api/v1/me").status_code for _ in range(21)]
        limited = c.get("/api/v1/me")
    assert statuses[:20] == [200] * 20 and statuses[20] == 429
    assert limited.status_code == 429
    body = limited.json()["error"]
    assert body["code"] == "rate_limited" and body["status"] == 429
    assert limited.headers["X-RateLimit-Remaining"] == "0" and int(limited.headers["Retry-After"]) >= 1
    with strict_api.client("admin") as c:  # another key has its own budget
        assert c.get("/api/v1/me").status_code == 200


def test_oversized_bodies_are_413(strict_api):
    with strict_api.client("admin") as c:
        big = c.post("/api/v1/api-keys", content=b'{"name": "' + b"x" * 5000 + b'"}',
                     headers={"content-type": "application/json"})

        def chunks():
            yield b'{"name": "'
            yield b"y" * 5000
            yield b'"}'

        chunked = c.post("/api/v1/api-keys", content=chunks(), headers={"content-type": "application/json"})
        small = c.post("/api/v1/api-keys", json={"name": "ok"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert chunked.status_code == 413
    assert small.status_code == 201


def test_health_stays_public(api):
    assert httpx.get(api.url + "/health").status_code == 200


def test_processes_sharing_redis_share_one_limit(tmp_path, redis_url):
    env = {"VOXLINE_RATE_LIMIT_PER_MINUTE": "10", "VOXLINE_REDIS_URL": redis_url}
    first = start_api_server(tmp_path, "sqlite", env)
    second = start_server(tmp_path, auth_token=None, extra_env=env)  # same database, same keys
    try:
        key = {"x-api-key": first.developer_key}
        statuses = [httpx.get(url + "/api/v1/me", headers=key).status_code
                    for url in [first.url, second.url] * 6]
        assert statuses[:10] == [200] * 10 and statuses[10:] == [429, 429], statuses
    finally:
        stop_server(first.server)
        stop_server(second)


async def test_a_key_claimed_by_another_process_is_not_run_twice(api):
    """Another server process sharing the database has claimed the key and is still running the request: this one
    answers 409 `idempotency_in_progress` and creates nothing; once that claim is abandoned the key works again."""
    import hashlib
    import json as _json
    from datetime import timedelta

    from runtime.api.auth import hash_key
    from runtime.store import db as store_db
    from runtime.store.models import IdempotencyRecord, utcnow

    key, body, path = f"idem-{uuid.uuid4()}", {"name": "claimed"}, "/api/v1/api-keys"
    owner = hashlib.sha256(("key:" + hash_key(api.admin_key)).encode()).hexdigest()
    raw = _json.dumps(body, separators=(",", ":")).encode()
    request_hash = hashlib.sha256(_json.dumps([path, "", raw.decode()]).encode()).hexdigest()
    engine = store_db.create_engine(api.database_url)
    sessions = store_db.sessionmaker(engine)
    async with sessions() as s:
        s.add(IdempotencyRecord(scope=owner, key=key, request_hash=request_hash, status_code=0, body=b"",
                                content_type=""))
        await s.commit()
    async with httpx.AsyncClient(base_url=api.url, headers={"x-api-key": api.admin_key}) as c:
        before = len((await c.get(path)).json()["data"])
        running = await c.post(path, content=raw, headers={"Idempotency-Key": key, "content-type": "application/json"})
        assert running.status_code == 409 and running.json()["error"]["code"] == "idempotency_in_progress"
        assert len((await c.get(path)).json()["data"]) == before, "the request ran although the key was claimed"
        async with sessions() as s:  # the claiming process died long ago
            record = await s.get(IdempotencyRecord, (owner, key))
            record.created_at = utcnow() - timedelta(minutes=10)
            await s.commit()
        retried = await c.post(path, content=raw, headers={"Idempotency-Key": key, "content-type": "application/json"})
        assert retried.status_code == 201, retried.text
    await engine.dispose()
