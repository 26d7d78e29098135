"""ASGI guards in front of every /api route: request size, rate limit, idempotent retries.

Each only looks at /api paths; the carrier webhook and media streams have their own checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import timedelta

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.storage import storage_from_string
from limits.aio.strategies import MovingWindowRateLimiter
from loguru import logger
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.api.auth import hash_key
from runtime.api.errors import error_response
from runtime.store.models import IdempotencyRecord, utcnow


def _is_api(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["path"].startswith("/api/")


def _caller_identity(scope: Scope) -> str:
    """Whose budget a request spends: its API key's hash, or its client address when it has none."""
    headers = Headers(scope=scope)
    key = headers.get("x-api-key")
    if not key:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        key = value.strip() if scheme.lower() == "bearer" else ""
    if key:
        return "key:" + hash_key(key)
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, upstream: Receive) -> Receive:
    """The body already read, then the real channel: a streaming response listens on it for the client leaving."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await upstream()

    return receive


class BodyLimit:
    """413 for /api bodies over the limit, whether announced by Content-Length or sent chunked."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_api(scope) or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        body = None if too_big else await _read_body(receive, self.max_bytes)
        if body is None:
            response = error_response(413, "request_too_large", f"request body over {self.max_bytes} bytes")
            return await response(scope, receive, send)
        await self.app(scope, _replay(body, receive), send)


class RateLimit:
    """A moving one-minute window per API key (per client address without one), with X-RateLimit-* headers on
    every /api response. In process by default; shared by every server process given a Redis URL."""

    def __init__(self, app: ASGIApp, per_minute: int, redis_url: str | None = None):
        self.app = app
        self.item = RateLimitItemPerMinute(per_minute)
        storage = storage_from_string(f"async+{redis_url}") if redis_url else MemoryStorage()
        self.limiter = MovingWindowRateLimiter(storage)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_api(scope):
            return await self.app(scope, receive, send)
        identity = _caller_identity(scope)
        allowed = await self.limiter.hit(self.item, identity)
        stats = await self.limiter.get_window_stats(self.item, identity)
        headers = {
            "X-RateLimit-Limit": str(self.item.amount),
            "X-RateLimit-Remaining": str(stats.remaining),
            "X-RateLimit-Reset": str(int(stats.reset_time)),
        }
        if not allowed:
            retry = max(1, int(stats.reset_time - time.time()))
            response = error_response(429, "rate_limited", f"over {self.item.amount} requests per minute",
                                      headers={**headers, "Retry-After": str(retry)})
            return await response(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


# Secrets a response shows once (a new API key, a webhook signing secret): never stored for replays.
SECRET_FIELDS = ("api_key", "secret")


def _without_secrets(body: bytes, content_type: str) -> bytes:
    if "json" not in content_type:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict) and any(f in data for f in SECRET_FIELDS):
        return json.dumps({k: (None if k in SECRET_FIELDS else v) for k, v in data.items()}).encode()
    return body


class Idempotency:
    """POSTs with an `Idempotency-Key`: the first successful response is stored for `ttl` and replayed to retries
    with the same key and body (scoped to the API key used); the same key with another body is a 409.
    Secrets in the response are not stored, so a replay shows them as null."""

    def __init__(self, app: ASGIApp, db_getter, ttl: timedelta = timedelta(hours=24)):
        self.app, self.db_getter, self.ttl = app, db_getter, ttl
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_api(scope) or scope["method"] != "POST" or not (key := Headers(scope=scope).get("idempotency-key")):
            return await self.app(scope, receive, send)
        if len(key) > 255:
            return await error_response(400, "invalid_request", "Idempotency-Key is over 255 characters")(
                scope, receive, send)
        body = await _read_body(receive, 1 << 30) or b""
        request_hash = hashlib.sha256(
            json.dumps([scope["path"], scope.get("query_string", b"").decode(), body.decode("utf-8", "replace")]).encode()
        ).hexdigest()
        owner = hashlib.sha256(_caller_identity(scope).encode()).hexdigest()
        db = self.db_getter(scope)
        lock = self._locks.setdefault((owner, key), asyncio.Lock())  # same-process retries wait for the first
        async with lock:
            try:
                await self._handle(scope, receive, send, body, key, owner, request_hash, db)
            finally:
                if not lock._waiters:  # type: ignore[attr-defined]
                    self._locks.pop((owner, key), None)

    async def _handle(self, scope, receive, send, body, key, owner, request_hash, db) -> None:
        async with db() as s:
            record = await s.get(IdempotencyRecord, (owner, key))
            stale = record is not None and (_age(record.created_at) > self.ttl or (
                record.status_code == _RUNNING and _age(record.created_at) > _ABANDONED_AFTER))
            if stale:  # expired, or claimed by a process that died before answering
                await s.delete(record)
                await s.commit()
                record = None
        if record is not None:
            if record.request_hash != request_hash:
                response = error_response(409, "idempotency_conflict",
                                          "this Idempotency-Key was used with a different request")
                return await response(scope, _replay(b"", receive), send)
            if record.status_code == _RUNNING:
                return await _still_running(scope, receive, send)
            await send({"type": "http.response.start", "status": record.status_code, "headers": [
                (b"content-type", record.content_type.encode()), (b"content-length", str(len(record.body)).encode()),
                (b"idempotent-replayed", b"true")]})
            return await send({"type": "http.response.body", "body": record.body})

        # Claim the key in the database before running the request: another server process given the same key at
        # the same moment (a client retrying against a load balancer) must not run it a second time.
        try:
            async with db() as s:
                s.add(IdempotencyRecord(scope=owner, key=key, request_hash=request_hash, status_code=_RUNNING,
                                        body=b"", content_type=""))
                await s.commit()
        except IntegrityError:
            return await _still_running(scope, receive, send)

        captured: dict = {"body": bytearray()}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["content_type"] = Headers(raw=message.get("headers", [])).get("content-type", "")
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            await send(message)

        succeeded = False
        try:
            await self.app(scope, _replay(body, receive), capture)
            succeeded = 200 <= captured.get("status", 500) < 300
        finally:
            await self._settle(db, owner, key, captured if succeeded else None)

    async def _settle(self, db, owner: str, key: str, captured: dict | None) -> None:
        """Store a success for replays; forget a failure, so that a retry runs the request again."""
        try:
            async with db() as s:
                record = await s.get(IdempotencyRecord, (owner, key))
                if record is None:
                    return
                if captured is None:
                    await s.delete(record)
                else:
                    record.status_code = captured["status"]
                    record.body = _without_secrets(bytes(captured["body"]), captured["content_type"])
                    record.content_type = captured["content_type"]
                await s.commit()
        except Exception:  # the response is already sent: a failed save must not break it
            logger.exception("idempotency: could not store the response for replay")


# status_code of a key whose first request is still running; one not answered this long is taken as abandoned.
_RUNNING = 0
_ABANDONED_AFTER = timedelta(minutes=5)


async def _still_running(scope, receive, send) -> None:
    response = error_response(409, "idempotency_in_progress",
                              "a request with this Idempotency-Key is still running; retry once it has answered")
    await response(scope, _replay(b"", receive), send)


def _age(created) -> timedelta:
    now = utcnow()
    return now - (created if created.tzinfo else created.replace(tzinfo=now.tzinfo))


async def purge_expired_idempotency(db, ttl: timedelta = timedelta(hours=24)) -> None:
    async with db() as s:
        await s.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < utcnow() - ttl))
        await s.commit()


