"""Signed webhooks (issue 6): /api/v1/webhooks, the outbox's deliveries and their retries, against a real receiver.

The receiver is a real HTTP server on a loopback port, so the servers under test run with
VOXLINE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS on (except the shared `api` server, which shows that loopback is refused) and
with retry delays of fractions of a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import signal
import time

import httpx
import pytest

from runtime.webhooks import verify
from tests.api_helpers import refused
from tests.calls import dial
from tests.conftest import DEMO_NUMBER, start_api_server, start_server, stop_server
from tests.webhook_receiver import Receiver, receiver  # noqa: F401 (a fixture)

HOOKS = "/api/v1/webhooks"
NO_SUCH_ID = "0123456789abcdef0123456789abcdef"
RETRY_SECS = (0.3, 0.6, 0.9)  # four attempts in all
FAST_ENV = {
    "VOXLINE_RATE_LIMIT_PER_MINUTE": "100000",
    "VOXLINE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS": "true",
    "VOXLINE_WEBHOOK_RETRY_SECS": ",".join(map(str, RETRY_SECS)),
    "VOXLINE_WEBHOOK_POLL_SECS": "0.1",
    "VOXLINE_WEBHOOK_TIMEOUT_SECS": "1",  # a claim's lease: 2 × 1 + 5 = 7 s
}


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def hooks(request, tmp_path_factory):
    """A server whose webhooks may reach loopback and retry fast; on SQLite and on PostgreSQL. Session-scoped like
    `api`, which one test here also uses: pytest then orders the tests so that each server starts once."""
    pg = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    srv = start_api_server(tmp_path_factory.mktemp(f"hooks-{request.param}"), request.param, FAST_ENV, pg)
    yield srv
    stop_server(srv.server)


# --- helpers --------------------------------------------------------------------------------------------------------

def create(c: httpx.Client, url: str, events=("call.ended",), **over) -> dict:
    r = c.post(HOOKS, json={"url": url, "events": list(events), **over})
    assert r.status_code == 201, r.text
    return r.json()


def shown(hook: dict) -> dict:
    """A webhook as reads show it: without the secret its creation returned."""
    return {k: v for k, v in hook.items() if k != "secret"}


def ping(c: httpx.Client, hook: dict) -> dict:
    r = c.post(f"{HOOKS}/{hook['id']}/test")
    assert r.status_code == 202, r.text
    return r.json()


def deliveries(c: httpx.Client, hook: dict, **params) -> list[dict]:
    r = c.get(f"{HOOKS}/{hook['id']}/deliveries", params=params)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def wait_delivery(c: httpx.Client, hook: dict, event_id: str, done, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = deliveries(c, hook, event_id=event_id)
        if found and done(found[0]):
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def settled(d: dict) -> bool:
    return d["status"] != "pending"


def recipe_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The README's recipe, written out: hex HMAC-SHA256 over "{timestamp}." + the raw body."""
    return "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


# --- the API --------------------------------------------------------------------------------------------------------

def test_create_shows_the_secret_once_then_read_update_list_and_delete(hooks, receiver):
    with hooks.client("developer") as c:
        r = c.post(HOOKS, json={"url": receiver.url + "/a", "events": ["call.ended", "call.started", "call.ended"],
                                "description": "CRM"})
        assert r.status_code == 201, r.text
        created = r.json()
        secret = created.pop("secret")
        assert secret.startswith("whsec_") and len(secret) > 30
        assert created["events"] == ["call.ended", "call.started"]  # each once, in the order given
        assert created["active"] is True and created["description"] == "CRM"
        got = c.get(f"{HOOKS}/{created['id']}")
        assert got.status_code == 200 and got.json() == created and "secret" not in got.json()
        listed = c.get(HOOKS).json()["data"]
        assert created in listed and all("secret" not in h for h in listed)

        r = c.patch(f"{HOOKS}/{created['id']}", json={"events": ["batch.completed"], "active": False,
                                                      "description": None})
        assert r.status_code == 200, r.text
        changed = r.json()
        assert changed["events"] == ["batch.completed"] and changed["active"] is False
        assert changed["description"] is None and changed["url"] == created["url"] and "secret" not in changed
        assert c.get(f"{HOOKS}/{created['id']}").json() == changed
        # An inactive webhook is sent nothing, tests included.
        assert c.post(f"{HOOKS}/{created['id']}/test").status_code == 409

        assert c.delete(f"{HOOKS}/{created['id']}").json() == {"id": created["id"], "deleted": True}
        assert c.get(f"{HOOKS}/{created['id']}").status_code == 404
        assert c.delete(f"{HOOKS}/{created['id']}").status_code == 404
    assert secret not in hooks.server.log()


def test_bad_fields_are_refused_by_name(hooks):
    with hooks.client() as c:
        good = {"url": "https://example.com/hooks", "events": ["call.ended"]}
        refused(c.post(HOOKS, json={**good, "events": ["call.exploded"]}), "events.0")
        refused(c.post(HOOKS, json={**good, "events": []}), "events")
        refused(c.post(HOOKS, json={**good, "url": "ftp://example.com/x"}), "url")
        refused(c.post(HOOKS, json={**good, "url": "not a url"}), "url")
        refused(c.post(HOOKS, json={**good, "url": "http://example.com:99999/"}), "url")
        for bad_host in ("http://exa mple.com/", "http://exa%20mple.com/", "https://-a.example.com/",
                         "https://a_b.example.com/", "https://ex!ample.com/"):  # were accepted, then never delivered
            assert "not a valid DNS name" in refused(c.post(HOOKS, json={**good, "url": bad_host}), "url"), bad_host
        assert create(c, "https://ex\u00e4mple.com/hooks")["url"] == "https://ex\u00e4mple.com/hooks"  # IDN: fine
        refused(c.post(HOOKS, json={**good, "secret": "mine"}), "secret")
        refused(c.post(HOOKS, json={"events": ["call.ended"]}), "url")
        hook = create(c, "https://example.com/hooks")
        refused(c.patch(f"{HOOKS}/{hook['id']}", json={"url": None}), "url")
        refused(c.patch(f"{HOOKS}/{hook['id']}", json={"active": None}), "active")
        refused(c.patch(f"{HOOKS}/{hook['id']}", json={"events": ["nope"]}), "events.0")
        refused(c.patch(f"{HOOKS}/{hook['id']}", json={"url": "http://exa mple.com/"}), "url")
        assert c.get(f"{HOOKS}/{hook['id']}").json() == shown(hook)  # nothing changed


def test_another_workspace_gets_404_for_everything(hooks, receiver):
    with hooks.client("admin") as c:
        hook = create(c, receiver.url + receiver.path())
    with hooks.client("other") as other:
        base = f"{HOOKS}/{hook['id']}"
        assert other.get(base).status_code == 404
        assert other.patch(base, json={"active": False}).status_code == 404
        assert other.delete(base).status_code == 404
        assert other.get(f"{base}/deliveries").status_code == 404
        assert other.post(f"{base}/test").status_code == 404
        assert hook["id"] not in [h["id"] for h in other.get(HOOKS).json()["data"]]
        assert other.get(f"{HOOKS}/{NO_SUCH_ID}").status_code == 404
    with hooks.client("admin") as c:
        assert c.get(base).json() == shown(hook)


def test_private_targets_are_refused_unless_allowed(api, receiver):
    """The shared `api` server keeps the default: loopback, private and link-local targets are refused at creation
    and change (400 naming url), and again at delivery, for a URL that points somewhere private after the check."""
    with api.client() as c:
        for url in ("http://127.0.0.1:8080/x", "http://localhost/x", "http://10.1.2.3/x", "http://[::1]/x",
                    "http://169.254.169.254/latest/meta-data", "http://192.168.0.10/x"):
            message = refused(c.post(HOOKS, json={"url": url, "events": ["call.ended"]}), "url", "invalid_request")
            assert "ALLOW_PRIVATE_NETWORKS" in message
        hook = create(c, "https://example.com/hooks")
        refused(c.patch(f"{HOOKS}/{hook['id']}", json={"url": "http://127.0.0.1/x"}), "url", "invalid_request")
        assert c.get(f"{HOOKS}/{hook['id']}").json()["url"] == "https://example.com/hooks"

        # As if its DNS changed since: the stored URL now leads to loopback.
        path = receiver.path()
        asyncio.run(_set_url(api.database_url, hook["id"], receiver.url + path))
        sent = ping(c, hook)
        d = wait_delivery(c, hook, sent["event_id"], lambda d: d["attempt_log"])
        c.delete(f"{HOOKS}/{hook['id']}")
    assert d["attempt_log"][0]["status_code"] is None
    assert "refused" in d["attempt_log"][0]["error"] and "127.0.0.1" in d["attempt_log"][0]["error"], d
    time.sleep(0.2)
    assert receiver.at(path) == []


async def _set_url(database_url: str, hook_id: str, url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE webhooks SET url = :url WHERE id = :id"), {"url": url, "id": hook_id})
    finally:
        await engine.dispose()


# --- deliveries -----------------------------------------------------------------------------------------------------

def test_a_delivery_is_signed_as_documented(hooks, receiver):
    path = receiver.path()
    with hooks.client() as c:
        r = c.post(HOOKS, json={"url": receiver.url + path, "events": ["call.ended"]})
        hook = r.json()
        secret = hook["secret"]
        sent = ping(c, hook)
        (got,) = receiver.wait(path, 1)
        d = wait_delivery(c, hook, sent["event_id"], settled)

    h = got.headers
    assert h["content-type"] == "application/json"
    assert h["x-voxline-event-id"] == sent["event_id"] and h["x-voxline-event"] == "webhook.test"
    assert abs(int(h["x-voxline-timestamp"]) - time.time()) < 30
    # The documented recipe, by hand, over the raw body...
    assert h["x-voxline-signature"] == recipe_signature(secret, h["x-voxline-timestamp"], got.body)
    # ...and the package's helper, which also refuses anything altered, stale or signed with another secret.
    assert verify(secret, h["x-voxline-timestamp"], got.body, h["x-voxline-signature"])
    assert not verify(secret, h["x-voxline-timestamp"], got.body + b" ", h["x-voxline-signature"])
    assert not verify("whsec_other", h["x-voxline-timestamp"], got.body, h["x-voxline-signature"])
    assert not verify(secret, str(int(h["x-voxline-timestamp"]) + 1), got.body, h["x-voxline-signature"])
    assert not verify(secret, h["x-voxline-timestamp"], got.body, h["x-voxline-signature"], now=time.time() + 301)
    assert verify(secret, h["x-voxline-timestamp"], got.body, "v1=00, " + h["x-voxline-signature"])

    event = got.json()
    assert event["id"] == sent["event_id"] and event["type"] == "webhook.test"
    assert event["data"]["webhook_id"] == hook["id"] and event["created_at"].endswith("Z")
    assert d["status"] == "delivered" and d["attempts"] == 1 and d["event_type"] == "webhook.test", d
    assert d["payload"] == event and d["delivered_at"] and d["next_attempt_at"] is None
    (attempt,) = d["attempt_log"]
    assert attempt["attempt"] == 1 and attempt["status_code"] == 200 and attempt["error"] is None
    assert attempt["duration_ms"] >= 0 and attempt["at"]
    assert secret not in hooks.server.log()


def test_a_receiver_failing_twice_gets_one_delivery_after_two_retries(hooks, receiver):
    path = receiver.path(500, 503)
    with hooks.client() as c:
        hook = create(c, receiver.url + path)
        sent = ping(c, hook)
        d = wait_delivery(c, hook, sent["event_id"], settled)
        assert [x["status"] for x in deliveries(c, hook)] == ["delivered"]  # one delivery, however many attempts
    got = receiver.at(path)
    assert [g.answered for g in got] == [500, 503, 200]  # exactly one success, then nothing more
    assert {g.headers["x-voxline-event-id"] for g in got} == {sent["event_id"]}
    assert [g.headers["x-voxline-attempt"] for g in got] == ["1", "2", "3"]
    assert len({g.body for g in got}) == 1  # the same event each time, freshly signed
    assert all(verify(hook["secret"], g.headers["x-voxline-timestamp"], g.body, g.headers["x-voxline-signature"])
               for g in got)
    # Backed off by the schedule (±20% jitter), not hammered.
    assert got[1].at - got[0].at >= RETRY_SECS[0] * 0.8 - 0.05
    assert got[2].at - got[1].at >= RETRY_SECS[1] * 0.8 - 0.05

    assert d["status"] == "delivered" and d["attempts"] == 3 and d["last_status_code"] == 200, d
    assert d["last_error"] is None
    log = d["attempt_log"]
    assert [a["attempt"] for a in log] == [1, 2, 3]
    assert [a["status_code"] for a in log] == [500, 503, 200]
    assert log[0]["error"].startswith("HTTP 500") and "receiver says no" in log[0]["error"]
    assert log[1]["error"].startswith("HTTP 503") and log[2]["error"] is None


def test_timeouts_and_dropped_connections_are_retried_until_the_schedule_ends(hooks, receiver):
    path = receiver.path("drop", "hang", 404, 500, 500)  # the fifth is never asked for
    with hooks.client() as c:
        hook = create(c, receiver.url + path)
        sent = ping(c, hook)
        d = wait_delivery(c, hook, sent["event_id"], settled)
        assert deliveries(c, hook, status="failed")[0]["id"] == d["id"]
        assert deliveries(c, hook, status="pending") == []
    assert d["status"] == "failed" and d["attempts"] == len(RETRY_SECS) + 1 and d["last_status_code"] == 500, d
    log = d["attempt_log"]
    assert [a["attempt"] for a in log] == [1, 2, 3, 4]
    assert log[0]["status_code"] is None and "connection error" in log[0]["error"], log[0]
    assert log[1]["status_code"] is None and log[1]["error"].startswith("timeout"), log[1]
    assert 900 <= log[1]["duration_ms"] < 2500, log[1]
    assert log[2]["status_code"] == 404 and log[2]["error"].startswith("HTTP 404"), log[2]
    assert log[3]["status_code"] == 500 and log[3]["error"].startswith("HTTP 500"), log[3]
    assert d["last_error"] == log[3]["error"]
    time.sleep(RETRY_SECS[-1] * 1.3)
    assert len(receiver.at(path)) == 4  # and no fifth


def test_call_events_reach_the_workspace_webhooks(hooks, receiver):
    """A real call (Twilio's webhook and media stream, as the carrier drives them) into an agent of workspace
    `default`: its webhook hears call.started then call.ended; another workspace's webhook hears nothing."""
    path, other_path, unsubscribed = receiver.path(), receiver.path(), receiver.path()
    with hooks.client() as c, hooks.client("other") as other:
        hook = create(c, receiver.url + path, events=["call.started", "call.ended"])
        create(c, receiver.url + unsubscribed, events=["batch.completed"])
        create(other, receiver.url + other_path, events=["call.started", "call.ended"])

        async def call() -> str:
            caller = await dial(hooks.server, DEMO_NUMBER)
            async with caller:
                await caller.wait_agent_audio(0.0, 20.0)
            return caller.answer.parameters["call_id"]

        call_id = asyncio.run(call())
        started, ended = receiver.wait(path, 2, timeout=30)
    events = [started.json(), ended.json()]
    assert [e["type"] for e in events] == ["call.started", "call.ended"], events
    assert all(e["data"]["id"] == call_id for e in events), events
    assert ended.json()["data"]["ended_at"] and ended.json()["data"]["to_number"] == DEMO_NUMBER
    assert all(verify(hook["secret"], g.headers["x-voxline-timestamp"], g.body, g.headers["x-voxline-signature"])
               for g in (started, ended))
    assert started.headers["x-voxline-event-id"] != ended.headers["x-voxline-event-id"]
    time.sleep(0.3)
    assert receiver.at(other_path) == [] and receiver.at(unsubscribed) == []


# --- restarts -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_restart_loses_no_delivery(tmp_path, receiver, request, backend):
    """Killed between two attempts, and killed during one: the next server delivers both, each attempt logged."""
    pg = request.getfixturevalue("postgres") if backend == "postgresql" else None
    env = {**FAST_ENV, "VOXLINE_WEBHOOK_RETRY_SECS": "2,2,2"}
    api = start_api_server(tmp_path, backend, env, pg)
    between, during = receiver.path(500), receiver.path("hang")
    try:
        with api.client() as c:
            hook_a, hook_b = create(c, receiver.url + between), create(c, receiver.url + during)
            sent_a = ping(c, hook_a)
            receiver.wait(between, 1)
            wait_delivery(c, hook_a, sent_a["event_id"], lambda d: d["attempt_log"])  # failed once, retry in ~2 s
            sent_b = ping(c, hook_b)
            receiver.wait(during, 1)  # its receiver is answering slowly
    finally:
        api.server.proc.send_signal(signal.SIGKILL)  # no chance to hand anything back
        api.server.proc.wait()
    assert len(receiver.at(between)) == 1

    server = start_server(tmp_path, auth_token=None, extra_env={**env, "VOXLINE_DATABASE_URL": api.database_url})
    try:
        with httpx.Client(base_url=server.url, headers={"x-api-key": api.admin_key}, timeout=30) as c:
            a = wait_delivery(c, hook_a, sent_a["event_id"], settled, timeout=20)
            b = wait_delivery(c, hook_b, sent_b["event_id"], settled, timeout=20)  # after the 7 s lease
    finally:
        stop_server(server)
    assert a["status"] == "delivered" and [x["status_code"] for x in a["attempt_log"]] == [500, 200], a
    assert [g.answered for g in receiver.at(between)] == [500, 200]
    assert b["status"] == "delivered" and b["attempts"] == 2, b
    assert [x["status_code"] for x in b["attempt_log"]] == [None, 200], b
    assert b["attempt_log"][0]["error"].startswith("interrupted"), b
    assert [g.answered for g in receiver.at(during)] == ["hang", 200]
