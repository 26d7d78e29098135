"""The outbox's queries (claiming due deliveries, recording each attempt, handing claims back) and the one HTTP POST
an attempt makes.

A claim is a lease, kept in the row itself: claiming sets `claimed_by` and pushes `next_attempt_at` past the attempt's
longest possible run (`lease`), and `attempts` is the row's version (every claim increments it and every update checks
it), so of two processes racing for a row only one wins. Recording the outcome clears `claimed_by`. A row still
claimed when it falls due again was left by a process that died mid-attempt: whoever claims it next logs that attempt
as interrupted and tries again. Delivery is therefore at least once; receivers deduplicate on the event id.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from loguru import logger
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from pipelines.providers.tls import tls_context
from pipelines.tools.netguard import RefusedAddress, UnresolvableHost, resolve_checked
from runtime import __version__
from runtime.metrics import WEBHOOK_DELIVERIES
from runtime.store.models import Webhook, WebhookAttempt, WebhookDelivery, utcnow

INTERRUPTED = "interrupted: the server stopped during this attempt; its outcome is unknown, so it is tried again"
DEACTIVATED = "not delivered: the webhook was deactivated"
JITTER = (0.8, 1.2)
ERROR_BODY_CHARS = 300  # of a failed answer's body, kept in the attempt log


@dataclass
class Due:
    """A claimed delivery: everything one attempt needs."""

    id: str
    webhook_id: str
    event_id: str
    event_type: str
    payload: dict[str, Any]
    attempt: int  # this attempt's number, from 1
    url: str
    secret: str


@dataclass
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def retry_delay(attempt: int, schedule: list[float]) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (from 1), jittered; None when it was the last."""
    if attempt > len(schedule):
        return None
    return schedule[attempt - 1] * random.uniform(*JITTER)


async def claim(db: async_sessionmaker, worker: str, limit: int, lease: timedelta, max_attempts: int) -> list[Due]:
    """Take up to `limit` due deliveries for `worker`. SKIP LOCKED keeps PostgreSQL claimers off each other's rows;
    on SQLite (and as a second guard) each update re-checks the row's version."""
    now = utcnow()
    async with db() as s:
        rows = (await s.execute(
            select(WebhookDelivery, Webhook).join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        )).all()
        taken: list[Due] = []
        for delivery, hook in rows:
            # Read before updating: an ORM-enabled update also changes the loaded objects.
            attempts, lapsed_by = delivery.attempts, delivery.claimed_by
            due = Due(delivery.id, delivery.webhook_id, delivery.event_id, delivery.event_type, delivery.payload,
                      attempts + 1, hook.url, hook.secret)
            interrupted = lapsed_by is not None  # its lease ran out: the process that held it is gone
            if not hook.active:
                values: dict = {"status": "failed", "last_error": DEACTIVATED, "claimed_by": None}
            elif interrupted and attempts > max_attempts:  # already given its one extra try
                values = {"status": "failed", "last_error": INTERRUPTED, "claimed_by": None}
            else:
                values = {"claimed_by": worker, "attempts": attempts + 1, "next_attempt_at": now + lease}
            result = await s.execute(update(WebhookDelivery).where(
                WebhookDelivery.id == due.id, WebhookDelivery.status == "pending",
                WebhookDelivery.attempts == attempts).values(**values))
            if result.rowcount != 1:
                continue  # another process got there first
            if interrupted:
                s.add(WebhookAttempt(delivery_id=due.id, attempt=attempts, at=now, error=INTERRUPTED))
            if values.get("claimed_by") == worker:
                taken.append(due)
        await s.commit()
        return taken


async def record(db: async_sessionmaker, worker: str, due: Due, started, outcome: Outcome,
                 schedule: list[float]) -> str | None:
    """Log the attempt and move the delivery on: delivered, retried later, or failed for good. Returns the new
    status, or None when the row is no longer this worker's (deleted with its webhook, or taken over)."""
    now = utcnow()
    values: dict = {"claimed_by": None, "last_status_code": outcome.status_code, "last_error": outcome.error}
    if outcome.ok:
        values.update(status="delivered", delivered_at=now, last_error=None)
    elif (delay := retry_delay(due.attempt, schedule)) is None:
        values.update(status="failed")
    else:
        values.update(next_attempt_at=now + timedelta(seconds=delay))
    async with db() as s:
        result = await s.execute(update(WebhookDelivery).where(
            WebhookDelivery.id == due.id, WebhookDelivery.status == "pending", WebhookDelivery.claimed_by == worker,
            WebhookDelivery.attempts == due.attempt).values(**values))
        if result.rowcount != 1:
            await s.rollback()
            return None
        s.add(WebhookAttempt(delivery_id=due.id, attempt=due.attempt, at=started, status_code=outcome.status_code,
                             error=outcome.error, duration_ms=outcome.duration_ms))
        await s.commit()
    status = values.get("status", "pending")
    WEBHOOK_DELIVERIES.labels(result="retrying" if status == "pending" else status).inc()
    return status


async def release(db: async_sessionmaker, worker: str) -> int:
    """Hand back this worker's claims (attempts cut short by a shutdown) so that the next process to look tries them
    at once, rather than after the lease. Each is logged as an interrupted attempt."""
    now = utcnow()
    async with db() as s:
        rows = (await s.execute(select(WebhookDelivery.id, WebhookDelivery.attempts).where(
            WebhookDelivery.claimed_by == worker, WebhookDelivery.status == "pending"))).all()
        for delivery_id, attempts in rows:
            result = await s.execute(update(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id, WebhookDelivery.claimed_by == worker,
                WebhookDelivery.attempts == attempts).values(claimed_by=None, next_attempt_at=now))
            if result.rowcount == 1:
                s.add(WebhookAttempt(delivery_id=delivery_id, attempt=attempts, at=now, error=INTERRUPTED))
        await s.commit()
        return len(rows)


# --- the request ----------------------------------------------------------------------------------------------------

def refusal(exc: RefusedAddress) -> str:
    return str(exc).replace("tools may not reach", "webhooks may not reach") + \
        " (VOXLINE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS=true allows it)"


def body_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def post(url: str, body: bytes, headers: dict[str, str], *, allow_private: bool, timeout: float) -> Outcome:
    """One attempt: POST `body` to `url`, the host checked (netguard) and connected to at the checked address.
    Redirects are not followed (a 3xx is a failure). Never raises."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    code: int | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(timeout):  # all of it: resolution, connect, TLS, the answer
            code, error = await _post(url, body, headers, allow_private=allow_private, timeout=timeout)
    except (TimeoutError, httpx.TimeoutException):
        error = f"timeout: no answer within {timeout:g} s"
    except RefusedAddress as exc:
        error = f"refused: {refusal(exc)}"
    except UnresolvableHost as exc:
        error = f"connection error: {exc}"
    except httpx.HTTPError as exc:
        error = f"connection error: {exc or type(exc).__name__}"
    except Exception as exc:  # an odd URL or answer must not stop the dispatcher
        logger.opt(exception=exc).warning("webhook delivery: unexpected failure")
        error = f"{type(exc).__name__}: {exc}"
    return Outcome(code, error and error[:2000], int((loop.time() - start) * 1000))


async def _post(url: str, body: bytes, headers: dict[str, str], *, allow_private: bool,
                timeout: float) -> tuple[int | None, str | None]:
    target = httpx.URL(url)
    if target.scheme not in ("http", "https") or not target.host:
        return None, f"not an http(s) URL: {url}"
    host = target.raw_host.decode("ascii")  # IDNA-encoded: what DNS and TLS SNI take
    port = target.port or (443 if target.scheme == "https" else 80)
    ip = await resolve_checked(host, port, allow_private=allow_private)
    # Never a proxy from the environment, never a redirect: either would reach an address that was not checked.
    # The process's TLS context: a new one per client loaded the CA store on the event loop (providers/tls.py).
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, verify=tls_context(),
                                 timeout=timeout) as client:
        request = client.build_request(
            "POST", target.copy_with(host=str(ip)), content=body,
            headers={**headers, "Content-Type": "application/json", "User-Agent": f"voxline-webhooks/{__version__}",
                     "Host": target.netloc.decode("ascii")},
            # The connection goes to the checked address; TLS still names (and verifies) the real host.
            extensions={"sni_hostname": host} if target.scheme == "https" else {},
        )
        response = await client.send(request, stream=True)
        try:
            if response.is_success:
                return response.status_code, None
            text = bytearray()
            async for chunk in response.aiter_bytes():
                text += chunk
                if len(text) >= ERROR_BODY_CHARS:
                    break
            snippet = bytes(text[:ERROR_BODY_CHARS]).decode("utf-8", errors="replace").strip()
            message = f"HTTP {response.status_code} {response.reason_phrase}".strip()
            if response.is_redirect:
                message += " (redirects are not followed)"
            return response.status_code, message + (f": {snippet}" if snippet else "")
        finally:
            await response.aclose()
