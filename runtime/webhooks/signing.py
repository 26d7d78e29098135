"""Webhook signatures: what a delivery carries, and how a receiver checks it.

Every delivery is a POST whose body is the event as JSON, with these headers:

    X-Voxline-Event-Id:  evt_…            the event's id (the same in every attempt; deduplicate on it)
    X-Voxline-Event:     call.ended        the event type
    X-Voxline-Timestamp: 1718000000        unix seconds when this attempt was signed
    X-Voxline-Signature: v1=<hex>          hex(HMAC-SHA256(secret, f"{timestamp}.{body}"))

A receiver recomputes the HMAC over the timestamp, a dot and the raw body bytes (before any JSON parsing), compares
it in constant time, and refuses a timestamp too far from its own clock (a replayed request): `verify` below.
The signature header may list several `v1=` values separated by commas; any one matching is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SCHEME = "v1"
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def sign(secret: str, timestamp: int | str, body: str | bytes) -> str:
    """The X-Voxline-Signature value for `body` sent at `timestamp`."""
    mac = hmac.new(_bytes(secret), f"{timestamp}.".encode() + _bytes(body), hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"


def headers(secret: str, event_id: str, event_type: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "X-Voxline-Event-Id": event_id,
        "X-Voxline-Event": event_type,
        "X-Voxline-Timestamp": str(ts),
        "X-Voxline-Signature": sign(secret, ts, body),
    }


def verify(secret: str, timestamp: str | int, body: str | bytes, signature: str, tolerance_secs: float = 300,
           now: float | None = None) -> bool:
    """True when `signature` (the X-Voxline-Signature header) signs `body` (the raw request body) at `timestamp`
    (the X-Voxline-Timestamp header) with `secret`, and the timestamp is within `tolerance_secs` of now."""
    try:
        ts = int(str(timestamp).strip())
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_secs:
        return False
    expected = sign(secret, ts, body)
    candidates = [part.strip() for part in (signature or "").split(",")]
    # compare_digest on every candidate, without stopping early, keeps the comparison's timing flat.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(candidate.encode(), expected.encode())
    return matched
