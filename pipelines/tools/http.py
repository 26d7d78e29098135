"""Running one HTTP tool call: validate the arguments, check the address, send, and shape the answer.

Nothing here raises into the pipeline: every failure is a `ToolResult` error the LLM can talk about.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx
from loguru import logger

from pipelines.providers.tls import tls_context
from pipelines.tools.attachment import ToolAttachment
from pipelines.tools.netguard import RefusedAddress, UnresolvableHost, resolve_checked
from pipelines.tools.result import ToolResult
from pipelines.tools.schema import UncheckableSchema, errors

MAX_REDIRECTS = 3
_BODYLESS = ("GET", "DELETE")


@dataclass
class HttpToolSpec:
    """A stored tool definition (`ToolIn` of runtime/api/routes/tools.py), as one agent has attached it."""

    name: str
    description: str
    url: str
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_secs: float = 10.0
    fixed_arguments: dict[str, Any] = field(default_factory=dict)  # the attachment's: merged into every call
    offered_parameters: dict[str, Any] | None = None  # the schema the LLM sees; `parameters` when None

    @classmethod
    def from_definition(cls, definition: dict[str, Any], attachment: ToolAttachment | None = None) -> HttpToolSpec:
        known = {k: definition[k] for k in ("name", "description", "url", "method", "headers", "parameters",
                                            "timeout_secs") if k in definition}
        spec = cls(**known)
        if attachment is not None:
            spec.description = attachment.description or spec.description
            spec.headers = attachment.headers_over(spec.headers)
            spec.timeout_secs = attachment.timeout_secs or spec.timeout_secs
            spec.fixed_arguments = dict(attachment.arguments)
            spec.offered_parameters = attachment.llm_parameters(spec.parameters)
        return spec


def argument_failure(name: str, schema: dict[str, Any], arguments: Any) -> ToolResult | None:
    """The error result for `arguments` that `schema` does not accept, or cannot check; None when they pass."""
    try:
        problems = errors(schema, arguments)
    except UncheckableSchema as exc:
        # The LLM can do nothing about it, so it only learns the call was not made; the operator learns why.
        logger.warning(f"tool {name}: arguments not checked, so the tool was not called: its parameters schema "
                       f"cannot be applied: {exc}")
        return ToolResult.failure("invalid_arguments", "invalid arguments: they could not be checked (the "
                                                       "tool's parameters schema cannot be applied), so the tool "
                                                       "was not called")
    if not problems:
        return None
    parts = []
    for err in problems[:5]:
        where = "/".join(str(p) for p in err.absolute_path)
        parts.append(f"{where}: {err.message}" if where else err.message)
    return ToolResult.failure("invalid_arguments", f"invalid arguments: {'; '.join(parts)}")


async def call_http_tool(spec: HttpToolSpec, arguments: dict[str, Any], *, allow_private: bool,
                         max_bytes: int) -> ToolResult:
    arguments = {**arguments, **spec.fixed_arguments}
    if (refused := argument_failure(spec.name, spec.parameters, arguments)) is not None:
        return refused
    try:
        async with asyncio.timeout(spec.timeout_secs):  # the whole call: resolution, connect, redirects, body
            return await _send(spec, arguments, allow_private=allow_private, max_bytes=max_bytes)
    except (TimeoutError, httpx.TimeoutException):
        return ToolResult.failure("timeout", f"no answer within {spec.timeout_secs:g} s")
    except RefusedAddress as exc:
        return ToolResult.failure("refused_address", str(exc))
    except UnresolvableHost as exc:
        return ToolResult.failure("connection_error", str(exc))
    except httpx.HTTPError as exc:
        return ToolResult.failure("connection_error", f"request failed: {exc or type(exc).__name__}")
    except Exception as exc:  # a tool must never take the conversation down with it
        logger.opt(exception=exc).warning(f"tool {spec.name}: unexpected failure")
        return ToolResult.failure("failed", f"{type(exc).__name__}: {exc}")


async def _send(spec: HttpToolSpec, arguments: dict[str, Any], *, allow_private: bool, max_bytes: int) -> ToolResult:
    method, url, headers = spec.method.upper(), spec.url, dict(spec.headers)
    # Never a proxy from the environment, never redirects followed blindly: either would reach unchecked addresses.
    # The process's TLS context: a new one per client loaded the CA store on the event loop (providers/tls.py).
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, verify=tls_context(),
                                 timeout=spec.timeout_secs) as client:
        for _ in range(MAX_REDIRECTS + 1):
            target = httpx.URL(url)
            if target.scheme not in ("http", "https") or not target.host:
                return ToolResult.failure("refused_address", f"not an http(s) URL: {url}")
            host = target.raw_host.decode("ascii")  # IDNA-encoded: what DNS and TLS SNI take
            port = target.port or (443 if target.scheme == "https" else 80)
            ip = await resolve_checked(host, port, allow_private=allow_private)
            dialled = target.copy_with(host=str(ip))
            if method in _BODYLESS and arguments:
                dialled = dialled.copy_merge_params(arguments)  # added to the URL's own query, not replacing it
            request = client.build_request(
                method, dialled,
                json=None if method in _BODYLESS else arguments,
                headers={**headers, "Host": target.netloc.decode("ascii")},
                # The connection goes to the checked address; TLS still names (and verifies) the real host.
                extensions={"sni_hostname": host} if target.scheme == "https" else {},
            )
            response = await client.send(request, stream=True)
            try:
                location = response.headers.get("location") if response.is_redirect else None
                if location is None:
                    return await _result(response, max_bytes)
            finally:
                await response.aclose()
            next_url = urljoin(url, location)
            if httpx.URL(next_url).host != target.host:
                headers = {}  # the tool's headers (often credentials) are for its own host only
            if response.status_code in (301, 302, 303) and method not in ("GET", "HEAD"):
                method, arguments = "GET", {}
            url = next_url
        return ToolResult.failure("http_error", f"more than {MAX_REDIRECTS} redirects", status=response.status_code)


async def _result(response: httpx.Response, max_bytes: int) -> ToolResult:
    body, truncated = bytearray(), False
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            del body[max_bytes:]
            truncated = True
            break
    text = bytes(body).decode(response.encoding or "utf-8", errors="ignore" if truncated else "replace")
    value: Any = text
    if not truncated and "json" in response.headers.get("content-type", ""):
        try:
            value = json.loads(bytes(body)) if body else None
        except ValueError:
            pass
    if not response.is_success:
        return ToolResult.failure("http_error", f"HTTP {response.status_code} {response.reason_phrase}".strip(),
                                  status=response.status_code, value=value or None)
    return ToolResult.success(value, status=response.status_code, truncated=truncated)
