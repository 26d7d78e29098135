"""/api/v1/webhooks: where a workspace's events are POSTed (signed), and what became of each delivery.

The signing secret is generated here and returned once, by the POST that creates the webhook; it is never shown again
(nor logged). A target on a private, loopback or link-local address is refused (400 naming `url`) unless
VOXLINE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS is on; every delivery checks the address again, since DNS answers change.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal
from urllib.parse import urlsplit

import httpx
import idna
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select

from pipelines.tools.netguard import refused_on_save
from runtime.api.auth import Caller, Principal
from runtime.api.errors import COMMON_ERRORS, ApiError, bad_request
from runtime.api.lookup import owned
from runtime.api.schemas import DataList, Page, Pagination, UTCDatetime
from runtime.context import Runtime, runtime_of
from runtime.store.models import Webhook, WebhookAttempt, WebhookDelivery, utcnow
from runtime.webhooks import outbox, signing
from runtime.webhooks.delivery import refusal

router = APIRouter(prefix="/api/v1", tags=["webhooks"], responses=COMMON_ERRORS)

Event = Literal[outbox.EVENTS]  # type: ignore[valid-type]
DeliveryStatus = Literal["pending", "delivered", "failed"]


# --- shapes ---------------------------------------------------------------------------------------------------------

def _text(value: str | None) -> str | None:
    if value is None:
        return value
    if "\x00" in value:  # PostgreSQL cannot store it in a text column
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")  # JSON may carry a lone surrogate (\ud800), which no database can store
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _target(value: str) -> str:
    _text(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a port out of range)
        url = httpx.URL(value)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or not url.host:
        raise ValueError("must be an http:// or https:// URL with a host")
    host = url.raw_host.decode("ascii", errors="replace")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        # httpx percent-encodes what a host cannot hold (`exa mple.com` → `exa%20mple.com`) instead of refusing it;
        # idna checks every label (letters, digits, hyphens; lengths; A-labels), so a delivery can only fail later
        # on DNS, not on a host that cannot exist.
        try:
            idna.encode(host.rstrip("."))
        except idna.IDNAError:
            raise ValueError(f"the host {parts.hostname!r} is not a valid DNS name") from None
    return value


class _In(BaseModel):
    # Refusing unknown keys beats ignoring them: a client should not believe it set something that was dropped.
    model_config = ConfigDict(extra="forbid")

    @field_validator("url", check_fields=False)
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return value if value is None else _target(value)

    @field_validator("events", check_fields=False)
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        return value if value is None else list(dict.fromkeys(value))  # each once, in the order given

    @field_validator("description", check_fields=False)
    @classmethod
    def _description(cls, value: str | None) -> str | None:
        return _text(value)


class WebhookIn(_In):
    url: str = Field(max_length=2000, description="Receives a POST per event", examples=["https://example.com/hooks"])
    events: list[Event] = Field(min_length=1, max_length=20, description="The events to send")
    active: bool = Field(default=True, description="An inactive webhook is sent nothing")
    description: str | None = Field(default=None, max_length=500)


class WebhookUpdate(_In):
    # Defaults are not validated, so an absent field stays None while an explicit null is refused by the type.
    url: str = Field(default=None, max_length=2000, description="Checked again like at creation")  # type: ignore
    events: list[Event] = Field(default=None, min_length=1, max_length=20)  # type: ignore[assignment]
    active: bool = Field(default=None, description="false stops deliveries, pending ones included")  # type: ignore
    description: str | None = Field(default=None, max_length=500, description="null clears it")


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    active: bool
    description: str | None
    created_at: UTCDatetime
    updated_at: UTCDatetime


class WebhookCreated(WebhookOut):
    secret: str | None = Field(description="Signs every delivery (HMAC-SHA256). Shown only here: store it now "
                                           "(null when an Idempotency-Key replays this response: never stored)")


class WebhookDeleted(BaseModel):
    id: str
    deleted: bool


class AttemptOut(BaseModel):
    attempt: int = Field(description="From 1")
    at: UTCDatetime
    status_code: int | None = Field(description="The receiver's answer; null when none came")
    error: str | None = Field(description="Why the attempt failed (network error, timeout, non-2xx); null on success")
    duration_ms: int | None


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: UTCDatetime | None = Field(description="When it is tried next (pending only)")
    last_status_code: int | None
    last_error: str | None
    created_at: UTCDatetime
    delivered_at: UTCDatetime | None
    payload: dict = Field(description="The body POSTed")
    attempt_log: list[AttemptOut]


class TestSent(BaseModel):
    event_id: str
    delivery_id: str
    event_type: str


# --- queries --------------------------------------------------------------------------------------------------------

def _out(hook: Webhook) -> WebhookOut:
    return WebhookOut.model_validate(hook, from_attributes=True)


async def _own(s, p: Principal, webhook_id: str, *, lock: bool = False) -> Webhook:
    return await owned(s, Webhook, webhook_id, p, "webhook", lock=lock)


async def _check_target(rt: Runtime, url: str) -> None:
    """Refuse a URL whose host resolves to a private, loopback or link-local address (unless allowed). A name that
    does not resolve now is accepted: each delivery resolves and checks it again."""
    if rt.settings.webhooks_allow_private_networks:
        return
    target = httpx.URL(url)
    host = target.raw_host.decode("ascii")
    port = target.port or (443 if target.scheme == "https" else 80)
    if (exc := await refused_on_save(host, port)) is not None:
        message = refusal(exc)
        raise bad_request(f"url: {message}", [{"field": "url", "message": message}])


def _delivery_out(d: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryOut:
    return DeliveryOut(
        id=d.id, event_id=d.event_id, event_type=d.event_type, status=d.status, attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status == "pending" else None, last_status_code=d.last_status_code,
        last_error=d.last_error, created_at=d.created_at, delivered_at=d.delivered_at, payload=d.payload or {},
        attempt_log=[AttemptOut.model_validate(a, from_attributes=True) for a in attempts],
    )


# --- routes ---------------------------------------------------------------------------------------------------------

@router.get("/webhooks", response_model=DataList[WebhookOut], summary="List the workspace's webhooks")
async def list_webhooks(p: Caller, request: Request) -> DataList[WebhookOut]:
    async with runtime_of(request).db() as s:
        rows = await s.scalars(select(Webhook).where(Webhook.workspace_id == p.workspace_id)
                               .order_by(Webhook.created_at, Webhook.id))
        return DataList[WebhookOut](data=[_out(h) for h in rows])


@router.post("/webhooks", response_model=WebhookCreated, status_code=201,
             summary="Create a webhook; the response carries its signing secret, shown only this once")
async def create_webhook(body: WebhookIn, p: Caller, request: Request) -> WebhookCreated:
    rt = runtime_of(request)
    await _check_target(rt, body.url)
    async with rt.db() as s:
        hook = Webhook(workspace_id=p.workspace_id, url=body.url, events=list(body.events), active=body.active,
                       description=body.description, secret=signing.new_secret())
        s.add(hook)
        await s.commit()
        return WebhookCreated(**_out(hook).model_dump(), secret=hook.secret)


@router.get("/webhooks/{webhook_id}", response_model=WebhookOut, summary="A webhook (without its secret)")
async def get_webhook(webhook_id: str, p: Caller, request: Request) -> WebhookOut:
    async with runtime_of(request).db() as s:
        return _out(await _own(s, p, webhook_id))


@router.patch("/webhooks/{webhook_id}", response_model=WebhookOut,
              summary="Change a webhook's URL, events, active flag or description")
async def update_webhook(webhook_id: str, body: WebhookUpdate, p: Caller, request: Request) -> WebhookOut:
    rt = runtime_of(request)
    change = body.model_dump(exclude_unset=True)
    async with rt.db() as s:
        await _own(s, p, webhook_id)  # first: another workspace's webhook is a 404, whatever the body
    if "url" in change:
        await _check_target(rt, change["url"])
    async with rt.db() as s:
        hook = await _own(s, p, webhook_id, lock=True)
        for field, value in change.items():
            setattr(hook, field, value)
        if change:
            hook.updated_at = utcnow()
            await s.commit()
        return _out(hook)


@router.delete("/webhooks/{webhook_id}", response_model=WebhookDeleted,
               summary="Delete a webhook, with its pending deliveries and their log")
async def delete_webhook(webhook_id: str, p: Caller, request: Request) -> WebhookDeleted:
    async with runtime_of(request).db() as s:
        hook = await _own(s, p, webhook_id, lock=True)
        await s.delete(hook)
        await s.commit()
    return WebhookDeleted(id=webhook_id, deleted=True)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=Page[DeliveryOut],
            summary="A webhook's deliveries, newest first, each with its log of attempts")
async def list_deliveries(
    webhook_id: str, p: Caller, request: Request,
    status: DeliveryStatus | None = None,
    event_id: Annotated[str | None, Query(max_length=40, pattern=r"^[A-Za-z0-9_]+$")] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page[DeliveryOut]:
    async with runtime_of(request).db() as s:
        hook = await _own(s, p, webhook_id)
        q = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
        if status:
            q = q.where(WebhookDelivery.status == status)
        if event_id is not None:
            q = q.where(WebhookDelivery.event_id == event_id)
        total = await s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = list(await s.scalars(q.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
                                    .offset((page - 1) * limit).limit(limit)))
        log: dict[str, list[WebhookAttempt]] = {d.id: [] for d in rows}
        if rows:
            for a in await s.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(list(log)))
                                     .order_by(WebhookAttempt.attempt, WebhookAttempt.id)):
                log[a.delivery_id].append(a)
        return Page[DeliveryOut](data=[_delivery_out(d, log[d.id]) for d in rows],
                                 pagination=Pagination(page=page, limit=limit, total=total,
                                                       has_next=page * limit < total))


@router.post("/webhooks/{webhook_id}/test", response_model=TestSent, status_code=202,
             summary=f"Send this webhook a `{outbox.TEST_EVENT}` event (whatever events it subscribes to)")
async def test_webhook(webhook_id: str, p: Caller, request: Request) -> TestSent:
    async with runtime_of(request).db() as s:
        hook = await _own(s, p, webhook_id)
        if not hook.active:
            raise ApiError(409, "conflict", "the webhook is inactive: activate it (PATCH active=true) to test it")
        delivery = await outbox.ping(s, hook)
        await s.commit()
    outbox.wake()
    return TestSent(event_id=delivery.event_id, delivery_id=delivery.id, event_type=delivery.event_type)
