"""ASGI guards in front of every /api route: request size, rate limit, idempotent retries.

Each only looks at /api paths, except the size limit, which also covers the carrier's unauthenticated HTTP callbacks
(/telephony/...): those have their own signature check, but it needs the whole body first.
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
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.api.auth import hash_key, presented_key
from runtime.api.errors import error_response
from runtime.store.models import ApiKey, IdempotencyRecord, utcnow

# Twilio's voice webhook and status callback are form posts of a few kilobytes; anything far larger is not Twilio.
CARRIER_MAX_BODY_BYTES = 64 * 1024


def _is_api(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["path"].startswith("/api/")


def _is_carrier(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["path"].startswith("/telephony/")


def _presented_key(scope: Scope) -> str | None:
    """The API key as the routes' authentication reads it (x-api-key, else `Authorization: Bearer`)."""
    return presented_key(Request(scope))


def _caller_identity(scope: Scope) -> str:
    """Whose budget a request spends: its API key's hash, or its client address when it has none."""
    if key := _presented_key(scope):
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
    """413 for bodies over the limit, whether announced by Content-Length or sent chunked, before more than the
    limit is read: /api bodies over `max_bytes`, carrier callbacks (/telephony/...) over `carrier_max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int, carrier_max_bytes: int = CARRIER_MAX_BODY_BYTES):
        self.app, self.max_bytes, self.carrier_max_bytes = app, max_bytes, carrier_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_bytes if _is_api(scope) else self.carrier_max_bytes if _is_carrier(scope) else None
        if limit is None or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > limit
        body = None if too_big else await _read_body(receive, limit)
        if body is None:
            response = error_response(413, "request_too_large", f"request body over {limit} bytes")
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


# Fields, at any depth of a JSON response, that carry a credential: never stored for replays (a replay shows null).
# A new API key (`api_key`), a webhook's signing secret (`secret`), a softphone call's stream token
# (`parameters.token`) and its event socket URL, which carries that socket's token in its query (`events_url`).
SECRET_FIELDS = frozenset({"api_key", "secret", "token", "events_url"})


def _scrub(value):
    """(value with every secret field nulled, whether any was)."""
    if isinstance(value, dict):
        out, found = {}, False
        for k, v in value.items():
            if k in SECRET_FIELDS and v is not None:
                out[k], found = None, True
            else:
                out[k], inner = _scrub(v)
                found = found or inner
        return out, found
    if isinstance(value, list):
        items = [_scrub(v) for v in value]
        return [v for v, _ in items], any(f for _, f in items)
    return value, False


def _without_secrets(body: bytes, content_type: str) -> bytes:
    if "json" not in content_type:
        return body
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return body
    scrubbed, found = _scrub(data)
    return json.dumps(scrubbed).encode() if found else body


def _mime(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _multipart_parts(content_type: str, body: bytes) -> list | None:
    """[name, filename, sha256 of content] per part, in order; None if the body is not well-formed multipart."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        return None
    parts: list = []
    state: dict = {"ended": False}

    def on_part_begin() -> None:
        state.update(headers={}, field=b"", value=b"", digest=hashlib.sha256())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["digest"].update(data[start:end])

    def on_part_end() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition"))
        name, filename = disposition.get(b"name"), disposition.get(b"filename")
        parts.append([name.hex() if name is not None else None, filename.hex() if filename is not None else None,
                      state["digest"].hexdigest()])

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end})
    try:
        parser.write(body)
        parser.finalize()
    except ValueError:  # malformed (MultipartParseError): the raw bytes decide
        return None
    return parts if state["ended"] else None


def _canonical_body(content_type: str, body: bytes) -> tuple[str, bytes]:
    """What decides whether two bodies are the same request: JSON by its parsed value (key order and whitespace do
    not matter), multipart by its parts (not the boundary, which each attempt draws afresh), anything else (or what
    fails to parse) by its raw bytes."""
    mime = _mime(content_type)
    if mime in ("", "application/json") or mime.endswith("+json"):  # no content type: the routes read JSON
        try:
            value = json.loads(body)
            return "json", json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        except (ValueError, RecursionError):
            pass
    elif mime == "multipart/form-data" and (parts := _multipart_parts(content_type, body)) is not None:
        return "multipart", json.dumps(parts).encode()
    return "raw", body


def request_fingerprint(path: str, query: bytes, content_type: str, body: bytes) -> str:
    """The hash an Idempotency-Key's record keeps of its request: a retry must match it."""
    kind, canonical = _canonical_body(content_type, body)
    digest = hashlib.sha256()
    for field in (path.encode("utf-8", "surrogatepass"), query, kind.encode(), canonical):
        digest.update(len(field).to_bytes(8, "big"))  # length-prefixed: no two field splits hash alike
        digest.update(field)
    return digest.hexdigest()


async def _key_is_active(db, secret: str) -> bool:
    async with db() as s:
        found = await s.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(secret),
                                                       ApiKey.revoked_at.is_(None)))
    return found is not None


class Idempotency:
    """POSTs with an `Idempotency-Key`: the first successful response is stored for `ttl` and replayed to retries
    with the same key and body (scoped to the API key used); the same key with another body is a 409.
    Secrets in the response (SECRET_FIELDS) are not stored, so a replay shows them as null. Only a valid, unrevoked
    API key takes part: any other request goes straight to the routes, which refuse it."""

    def __init__(self, app: ASGIApp, db_getter, ttl: timedelta = timedelta(hours=24)):
        self.app, self.db_getter, self.ttl = app, db_getter, ttl
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_api(scope) or scope["method"] != "POST" or not (key := Headers(scope=scope).get("idempotency-key")):
            return await self.app(scope, receive, send)
        db = self.db_getter(scope)
        # Authenticated here, before any replay: a revoked key must not read the responses it was once given.
        secret = _presented_key(scope)
        if not secret or not await _key_is_active(db, secret):
            return await self.app(scope, receive, send)
        if len(key) > 255:
            return await error_response(400, "invalid_request", "Idempotency-Key is over 255 characters")(
                scope, receive, send)
        body = await _read_body(receive, 1 << 30) or b""
        request_hash = request_fingerprint(scope["path"], scope.get("query_string", b""),
                                           Headers(scope=scope).get("content-type", ""), body)
        owner = hashlib.sha256(_caller_identity(scope).encode()).hexdigest()
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


