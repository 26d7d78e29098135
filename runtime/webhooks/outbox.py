"""Events go into the outbox in the same transaction as the change they report, so none is lost to a crash between
the two; delivering them is the dispatcher's job."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.store.models import Webhook, WebhookDelivery, utcnow

EVENTS = ("call.started", "call.ended", "call.analyzed", "call.transferred", "batch.completed")
# Not an event a webhook subscribes to: `ping` sends it to one webhook on request (POST /webhooks/{id}/test).
TEST_EVENT = "webhook.test"

_listeners: list = []  # callables woken after an enqueue commits (the dispatcher of this process)


def on_enqueued(callback) -> None:
    _listeners.append(callback)


def off_enqueued(callback) -> None:
    if callback in _listeners:
        _listeners.remove(callback)


def wake() -> None:
    for callback in list(_listeners):
        callback()


async def enqueue(s: AsyncSession, workspace_id: str, event_type: str, data: dict[str, Any]) -> str:
    """Add `event_type` for every active webhook of the workspace that wants it, inside the caller's transaction
    (the caller commits, then calls `wake()`). Returns the event id."""
    assert event_type in EVENTS, event_type
    event_id = "evt_" + uuid.uuid4().hex
    hooks = await s.scalars(select(Webhook).where(Webhook.workspace_id == workspace_id, Webhook.active.is_(True)))
    now = utcnow()
    body = {"id": event_id, "type": event_type, "created_at": now.isoformat().replace("+00:00", "Z"), "data": data}
    for hook in hooks:
        if event_type in (hook.events or []):
            s.add(WebhookDelivery(webhook_id=hook.id, event_id=event_id, event_type=event_type, payload=body,
                                  status="pending", attempts=0, next_attempt_at=now))
    return event_id


async def ping(s: AsyncSession, hook: Webhook) -> WebhookDelivery:
    """A `webhook.test` event for `hook` alone, whatever events it subscribes to (the caller commits, then wakes)."""
    event_id = "evt_" + uuid.uuid4().hex
    now = utcnow()
    body = {"id": event_id, "type": TEST_EVENT, "created_at": now.isoformat().replace("+00:00", "Z"),
            "data": {"webhook_id": hook.id, "message": "a test event, sent on request"}}
    delivery = WebhookDelivery(webhook_id=hook.id, event_id=event_id, event_type=TEST_EVENT, payload=body,
                               status="pending", attempts=0, next_attempt_at=now)
    s.add(delivery)
    return delivery
