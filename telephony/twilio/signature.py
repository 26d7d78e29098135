"""X-Twilio-Signature checks, with the twilio SDK's RequestValidator, against the public URL Twilio used."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection
from twilio.request_validator import RequestValidator

from config.settings import Settings


def public_url(conn: HTTPConnection, settings: Settings, *, websocket: bool = False) -> str:
    """The URL Twilio requested: VOXLINE_PUBLIC_URL + path (+ query) behind a proxy, else the request's own."""
    base = settings.public_url.rstrip("/") if settings.public_url else str(conn.base_url).rstrip("/")
    if websocket:
        base = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    query = conn.url.query
    return f"{base}{conn.url.path}{'?' + query if query else ''}"


def form_params(body: bytes) -> dict[str, str]:
    # Blank values are signed too: dropping them (as some form parsers do) breaks valid signatures.
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def is_valid(settings: Settings, url: str, params: dict[str, str], signature: str | None) -> bool:
    if settings.twilio_auth_token is None:
        return True
    if not signature:
        return False
    return RequestValidator(settings.twilio_auth_token.get_secret_value()).validate(url, params, signature)
