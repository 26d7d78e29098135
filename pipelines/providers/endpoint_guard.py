"""An agent's own OpenAI-compatible endpoint (`llm.base_url`, `realtime.base_url`) kept off private networks.

The URL comes from whoever holds a workspace key, and the server usually sits inside a private network. As for
tools and webhooks (pipelines/tools/netguard.py), every connection goes to a checked address: the host resolved,
every address it resolves to checked, and the checked one dialled (TLS still names and verifies the host), so a DNS
answer that changes between check and connect cannot redirect it. No proxy from the environment and no cross-origin redirect either:
both would reach an address nobody checked. Endpoints the operator configured or trusts, and every endpoint when
VOXLINE_PROVIDERS_ALLOW_PRIVATE_NETWORKS is set, are not held to this (config/provider_trust.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2
from loguru import logger
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.uri import parse_uri

from pipelines.tools.netguard import RefusedAddress, UnresolvableHost, resolve_checked

ALLOW_HINT = ("VOXLINE_PROVIDERS_ALLOW_PRIVATE_NETWORKS=true allows it, or VOXLINE_PROVIDER_TRUSTED_URLS for this "
              "endpoint")


def refusal(exc: RefusedAddress) -> str:
    """The refusal as an API error or a log line says it: which address, and what would allow it."""
    reason = str(exc).replace("tools may not reach", "an agent's own endpoint may not reach")
    return f"{reason} ({ALLOW_HINT})"


class PublicOnlyTransport(httpx2.AsyncBaseTransport):
    """A transport for the OpenAI SDK's client (httpx2, which openai 3 is built on) that connects only to checked
    public addresses.

    A refused address is answered here with a 403 in OpenAI's error shape: the SDK raises that at once, with the
    reason, where a raised exception would be retried twice as a connection error and reported as "Connection
    error." (pipecat's error, the chat API's `error` event and the call's log then say why).

    A checked address is kept for CHECKED_SECS, so that a call's turns after the first pay no DNS lookup: within
    that time its requests still go only to the address that was checked."""

    CHECKED_SECS = 60.0

    def __init__(self, inner: httpx2.AsyncBaseTransport, *, who: str, field: str):
        self._inner, self._who, self._field = inner, who, field
        self._checked: dict[tuple[str, int], tuple[float, Any]] = {}  # (host, port) -> (checked at, address)

    async def _address(self, host: str, port: int):
        now = time.monotonic()
        kept = self._checked.get((host, port))
        if kept is not None and now - kept[0] < self.CHECKED_SECS:
            return kept[1]
        ip = await resolve_checked(host, port, allow_private=False)
        self._checked[(host, port)] = (now, ip)
        return ip

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        host = url.raw_host.decode("ascii")  # IDNA-encoded: what DNS and TLS SNI take
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            ip = await self._address(host, port)
        except RefusedAddress as exc:
            message = f"{self._field}: {refusal(exc)}"
            logger.warning(f"{self._who}: {message}")
            body = {"error": {"message": f"voxline refused the request: {message}", "type": "refused_address",
                              "code": "refused_address"}}
            return httpx2.Response(403, content=json.dumps(body).encode(), request=request,
                                  headers={"content-type": "application/json"})
        except UnresolvableHost as exc:
            raise httpx2.ConnectError(str(exc), request=request) from None
        # The Host header was set from the URL when the request was built; only the dialled address changes.
        request.url = url.copy_with(host=str(ip))
        if url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": host}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def public_only_client(*, who: str, field: str, **transport_options: Any) -> httpx2.AsyncClient:
    """An HTTP client for the OpenAI SDK that dials only checked public addresses. No proxy from the environment:
    its mount would bypass the check."""
    from openai import DefaultAsyncHttpxClient

    transport = PublicOnlyTransport(httpx2.AsyncHTTPTransport(**transport_options), who=who, field=field)
    return DefaultAsyncHttpxClient(transport=transport, trust_env=False)


async def connect_public_only(uri: str, *, who: str, field: str, **kwargs: Any) -> ClientConnection:
    """`websockets.connect` to `uri`, dialling the checked address (raises RefusedAddress or UnresolvableHost)."""
    parsed = parse_uri(uri)
    try:
        ip = await resolve_checked(parsed.host, parsed.port, allow_private=False)
    except RefusedAddress as exc:
        message = f"{field}: {refusal(exc)}"
        logger.warning(f"{who}: {message}")
        raise RefusedAddress(message) from None
    # An explicit host makes websockets refuse cross-origin redirects; TLS still names the URI's host.
    return await websocket_connect(uri=uri, host=str(ip), port=parsed.port, proxy=None, **kwargs)
