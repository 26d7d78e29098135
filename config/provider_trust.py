"""Where the server's own provider keys may be sent.

An agent's `llm.base_url` / `realtime.base_url` is chosen by whoever holds a workspace key, so it must never receive
the server's OPENAI_API_KEY unless the operator trusts it: the provider's own origin, the endpoints configured in the
settings (VOXLINE_OPENAI_BASE_URL, VOXLINE_OPENAI_REALTIME_URL), and VOXLINE_PROVIDER_TRUSTED_URLS. Any other URL
still works for keyless OpenAI-compatible servers (Ollama, vLLM): the request goes out without the server's key.

The same URL is held to public addresses (pipelines/providers/endpoint_guard.py) unless the operator trusts it or
sets VOXLINE_PROVIDERS_ALLOW_PRIVATE_NETWORKS: otherwise a workspace key could point the server's requests at its
private network (a metadata service, an internal API) and read the answers back in a chat turn's error.

URLs are compared as (scheme, host, port, path segments): a trusted `https://api.openai.com` does not cover
`https://api.openai.com.evil.com` nor `https://api.openai.com@evil.com`, and `/v1` does not cover `/v1evil`. ws(s)
counts as http(s) (same host, same transport security), so one entry covers both chat and Realtime endpoints.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import TYPE_CHECKING, NamedTuple

import httpx
from loguru import logger

if TYPE_CHECKING:
    from config.settings import Settings

# Sent instead of the server's key to an untrusted base URL. The OpenAI SDK refuses an empty key and, given None,
# would read OPENAI_API_KEY from the environment (the very secret being withheld); keyless servers ignore it.
NO_SERVER_KEY = "voxline-no-server-key"

# The provider's own origins, and the settings naming the endpoints the operator points its key at.
_PROVIDER_ORIGINS = {"openai": ("https://api.openai.com",)}
_PROVIDER_SETTINGS = {"openai": ("openai_base_url", "openai_realtime_url")}

_SCHEMES = {"http": "http", "ws": "http", "https": "https", "wss": "https"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PLAIN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: anything else is parsed differently by clients


class Prefix(NamedTuple):
    scheme: str  # http or https (ws and wss folded in)
    host: str
    port: int
    segments: tuple[str, ...]


def parse(url: str) -> Prefix | None:
    """The URL as a comparable prefix, or None when it is not a plain absolute http(s)/ws(s) URL.

    Userinfo, a query, a fragment, dot segments, a backslash or a non-ASCII character make it None: each is a way
    for two URL parsers (the check's and the HTTP or WebSocket client's) to disagree on where the request goes.
    """
    if not isinstance(url, str) or not _PLAIN.fullmatch(url) or "\\" in url:
        return None
    try:
        split = urllib.parse.urlsplit(url)
        port = split.port
        other = httpx.URL(url)  # the OpenAI SDK's own parser must see the same host and port
    except (ValueError, httpx.InvalidURL):
        return None
    scheme = _SCHEMES.get(split.scheme.lower())
    host = split.hostname
    if scheme is None or not host or "@" in split.netloc or split.query or split.fragment or "?" in url or "#" in url:
        return None
    port = port if port is not None else _DEFAULT_PORTS[scheme]
    if other.host != host or (other.port if other.port is not None else _DEFAULT_PORTS[scheme]) != port:
        return None
    segments = tuple(s for s in split.path.split("/") if s)
    if any(urllib.parse.unquote(s) in (".", "..") for s in segments):
        return None
    return Prefix(scheme, host, port, segments)


def is_under(url: str, trusted: list[str] | tuple[str, ...]) -> bool:
    """Whether `url` is one of the `trusted` URLs or below one (whole path segments)."""
    candidate = parse(url)
    if candidate is None:
        return False
    for entry in trusted:
        prefix = parse(entry)
        if (prefix is not None and prefix[:3] == candidate[:3]
                and candidate.segments[:len(prefix.segments)] == prefix.segments):
            return True
    return False


def trusted_urls(settings: Settings, provider: str) -> list[str]:
    configured = [getattr(settings, name, None) for name in _PROVIDER_SETTINGS.get(provider, ())]
    return [*_PROVIDER_ORIGINS.get(provider, ()), *(u for u in configured if u), *settings.provider_trusted_urls]


def shown(url: str) -> str:
    """The URL for a log line: scheme, host, port and path only (no userinfo or query, which can hold secrets)."""
    p = parse(url)
    if p is None:
        return "(not a plain http(s)/ws(s) URL)"
    return f"{p.scheme}://{p.host}:{p.port}/{'/'.join(p.segments)}"


def withhold_server_key(settings: Settings, provider: str, url: str | None, *, who: str) -> bool:
    """True (and one log line) when `url`, an agent's own base URL, may not receive the server's key for `provider`.

    None or "" means the server's configured endpoint, which is trusted."""
    if not url or is_under(url, trusted_urls(settings, provider)):
        return False
    logger.warning(f"{who}: base_url {shown(url)} is not a trusted {provider} endpoint; sending its requests without "
                   "the server's API key (an operator can trust it with VOXLINE_PROVIDER_TRUSTED_URLS)")
    return True


def held_to_public_addresses(settings: Settings, provider: str, url: str | None) -> bool:
    """Whether requests to `url`, an agent's own base URL, may only reach public addresses.

    None or "" means the server's configured endpoint, which the operator chose."""
    if not url or settings.providers_allow_private_networks:
        return False
    return not is_under(url, trusted_urls(settings, provider))
