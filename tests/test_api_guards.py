"""Cross-cutting API behaviour: idempotent creates, rate limits, body size, unknown routes, the error body."""

from __future__ import annotations

import uuid

import httpx
import pytest

from runtime.api.guards import CARRIER_MAX_BODY_BYTES, request_fingerprint
from tests.conftest import start_api_server, start_server, stop_server
from tests.test_batch_calls import new_batch

METRICS_TOKEN = "metrics-secret-0123456789"


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
                           {"VOXLINE_RATE_LIMIT_PER_MINUTE": "20", "VOXLINE_MAX_BODY_BYTES": "4096",
                            "VOXLINE_METRICS_TOKEN": METRICS_TOKEN})
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


def test_health_and_readiness_stay_public(api):
    assert httpx.get(api.url + "/health").status_code == 200
    assert httpx.get(api.url + "/ready").status_code == 200


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
    from runtime.api.guards import request_fingerprint
    from runtime.store import db as store_db
    from runtime.store.models import IdempotencyRecord, utcnow

    key, body, path = f"idem-{uuid.uuid4()}", {"name": "claimed"}, "/api/v1/api-keys"
    owner = hashlib.sha256(("key:" + hash_key(api.admin_key)).encode()).hexdigest()
    raw = _json.dumps(body, separators=(",", ":")).encode()
    request_hash = request_fingerprint(path, b"", "application/json", raw)
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


# --- Idempotency-Key: who may replay, what is kept, what counts as the same request ---------------------------------

def _agent_id(c: httpx.Client, name: str) -> str:
    rows = c.get("/api/v1/agents", params={"name_search": name, "limit": 100}).json()["data"]
    return next(r["id"] for r in rows if r["name"] == name)


async def _stored_replays(api, key: str) -> list[bytes]:
    from sqlalchemy import select

    from runtime.store import db as store_db
    from runtime.store.models import IdempotencyRecord

    engine = store_db.create_engine(api.database_url)
    try:
        async with store_db.sessionmaker(engine)() as s:
            return [bytes(b) for b in await s.scalars(select(IdempotencyRecord.body)
                                                      .where(IdempotencyRecord.key == key))]
    finally:
        await engine.dispose()


async def test_a_revoked_key_gets_no_replay_and_no_live_token_is_kept(api):
    idem = f"idem-{uuid.uuid4()}"
    with api.client("admin") as c:
        created = c.post("/api/v1/api-keys", json={"name": "soon revoked"}).json()
        agent_id = _agent_id(c, "demo")
    async with httpx.AsyncClient(base_url=api.url, timeout=30,
                                 headers={"x-api-key": created["api_key"], "Idempotency-Key": idem}) as c:
        first = await c.post("/api/v1/softphone/calls", json={"agent_id": agent_id})
        replay = await c.post("/api/v1/softphone/calls", json={"agent_id": agent_id})
        assert first.status_code == 201, first.text
        stream_token = first.json()["parameters"]["token"]
        events_token = first.json()["events_url"].rsplit("token=", 1)[1]
        assert stream_token and events_token
        # The replay is the same call, without the tokens: they are credentials, shown once like a new API key.
        assert replay.status_code == 201 and replay.headers.get("idempotent-replayed") == "true"
        assert replay.json()["call_id"] == first.json()["call_id"]
        assert replay.json()["parameters"] == {"call_id": first.json()["call_id"], "token": None}
        assert replay.json()["events_url"] is None
        stored = await _stored_replays(api, idem)
        assert len(stored) == 1 and stored[0]
        assert stream_token.encode() not in stored[0] and events_token.encode() not in stored[0]

        with api.client("admin") as admin:
            assert admin.delete(f"/api/v1/api-keys/{created['id']}").status_code == 200
        after = await c.post("/api/v1/softphone/calls", json={"agent_id": agent_id})
    assert after.status_code == 401, after.text
    assert after.json()["error"]["code"] == "invalid_api_key" and "idempotent-replayed" not in after.headers


def test_idempotency_compares_json_bodies_by_value(api):
    key = f"idem-{uuid.uuid4()}"
    name = f"semantic-{uuid.uuid4().hex[:8]}"
    with api.client("admin") as c:
        def post(raw: str) -> httpx.Response:
            return c.post("/api/v1/api-keys", content=raw.encode(),
                          headers={"Idempotency-Key": key, "content-type": "application/json"})

        first = post(f'{{"name":"{name}","role":"developer"}}')
        spaced = post(f'{{ "name": "{name}",\n  "role": "developer" }}')
        reordered = post(f'{{"role":"developer","name":"{name}"}}')
        other = post(f'{{"role":"admin","name":"{name}"}}')
    assert first.status_code == 201, first.text
    for retry in (spaced, reordered):
        assert retry.status_code == 201 and retry.headers.get("idempotent-replayed") == "true", retry.text
        assert retry.json()["id"] == first.json()["id"]
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"


def test_idempotency_compares_uploads_by_their_parts_not_the_boundary(api):
    key = f"idem-{uuid.uuid4()}"
    csv_text = b"to_phonenumber,name\n+15550123456,Ada\n"
    with api.client("admin") as c:
        batch = new_batch(c)
        url = f"/api/v1/batch-call/upload/{batch['id']}"
        # httpx draws a new random boundary for each request, as curl and browsers do.
        first = c.post(url, files={"file": ("people.csv", csv_text, "text/csv")}, headers={"Idempotency-Key": key})
        retry = c.post(url, files={"file": ("people.csv", csv_text, "text/csv")}, headers={"Idempotency-Key": key})
        renamed = c.post(url, files={"file": ("other.csv", csv_text, "text/csv")}, headers={"Idempotency-Key": key})
        changed = c.post(url, files={"file": ("people.csv", csv_text.replace(b"Ada", b"Bob"), "text/csv")},
                         headers={"Idempotency-Key": key})
    assert first.request.headers["content-type"] != retry.request.headers["content-type"]  # two boundaries
    assert first.status_code == 200 and first.json()["data"]["added"] == 1, first.text
    assert retry.status_code == 200 and retry.headers.get("idempotent-replayed") == "true", retry.text
    assert retry.json() == first.json()
    for conflict in (renamed, changed):
        assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"


def test_bodies_that_are_not_utf8_are_compared_byte_for_byte():
    """They were decoded with replacement characters first, so any two invalid bytes compared equal."""
    for content_type in ("application/json", "application/octet-stream", ""):
        assert request_fingerprint("/api/v1/x", b"", content_type, b"\xff") != \
            request_fingerprint("/api/v1/x", b"", content_type, b"\xfe")
        assert request_fingerprint("/api/v1/x", b"", content_type, b"\xff") == \
            request_fingerprint("/api/v1/x", b"", content_type, b"\xff")


# --- the carrier's unauthenticated callbacks have a body limit too --------------------------------------------------

def _raw_request(api, head: str, body_parts) -> str:
    """Send a request over a plain socket, the body in parts, and read the status line of whatever comes back."""
    import socket

    with socket.create_connection(("127.0.0.1", api.server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            for part in body_parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):  # refused before everything was sent: what we want
            pass
        received = b""
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return received.split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize("path", ["/telephony/twilio/voice", "/telephony/twilio/status"])
def test_carrier_callbacks_over_the_limit_are_413_before_the_body_is_read(api, path):
    form = {"content-type": "application/x-www-form-urlencoded"}
    # Twilio's own posts are a few kilobytes: well within the limit (an unmapped number: a spoken refusal).
    within = httpx.post(api.url + path, content=b"To=%2B15559990000&From=%2B15551234567&Pad=" + b"x" * 60_000,
                        headers=form, timeout=30)
    assert within.status_code in (200, 204), within.text
    big = "To=%2B15550100000&From=" + "1" * (CARRIER_MAX_BODY_BYTES + 1)
    announced = httpx.post(api.url + path, content=big.encode(), headers=form, timeout=10)
    assert announced.status_code == 413 and announced.json()["error"]["code"] == "request_too_large"

    def chunks():
        yield b"To=%2B15550100000&From="
        for _ in range(CARRIER_MAX_BODY_BYTES // 4096 + 2):
            yield b"1" * 4096

    chunked = httpx.post(api.url + path, content=chunks(), headers=form, timeout=10)
    assert chunked.status_code == 413

    # Announced as 1 GB, or chunked without end, and only a little sent: answered at once, not read to the end.
    host = f"Host: 127.0.0.1:{api.server.port}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    assert " 413 " in _raw_request(api, f"POST {path} HTTP/1.1\r\n{host}Content-Length: 1000000000\r\n\r\n",
                                   [b"To=1&From=" + b"1" * 1000])
    chunk = b"1" * 8192
    assert " 413 " in _raw_request(api, f"POST {path} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n",
                                   [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (CARRIER_MAX_BODY_BYTES // 8192 + 2))


# --- /metrics ------------------------------------------------------------------------------------------------------

def test_metrics_take_only_a_bearer_token_and_refuse_in_the_error_shape(strict_api):
    def scrape(authorization: str | None) -> httpx.Response:
        headers = {"authorization": authorization} if authorization is not None else {}
        return httpx.get(strict_api.url + "/metrics", headers=headers, timeout=10)

    for accepted in (f"Bearer {METRICS_TOKEN}", f"bearer {METRICS_TOKEN}", f"BEARER  {METRICS_TOKEN}"):
        r = scrape(accepted)
        assert r.status_code == 200 and "# TYPE" in r.text, accepted
    for refused in (None, METRICS_TOKEN, f"Basic {METRICS_TOKEN}", f"Bearer {METRICS_TOKEN}x", "Bearer",
                    f"Token {METRICS_TOKEN}"):
        r = scrape(refused)
        assert r.status_code == 401, refused
        error = r.json()["error"]
        assert error["code"] == "unauthorized" and error["status"] == 401 and error["details"] == [], error
        assert r.headers["www-authenticate"] == "Bearer"
