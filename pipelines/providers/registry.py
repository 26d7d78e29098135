"""The one provider registry: (kind, provider name) → factory building the pipecat service from the agent config.

Every name here has its row in `config/providers.yaml` (a test keeps the two in step). To add a provider, add one
factory here and one catalog row there.
"""

from __future__ import annotations

import importlib

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pipecat.processors.frame_processor import FrameProcessor

from config import catalog, provider_trust
from config.agent import AgentConfig, ScriptConfig
from config.settings import Settings
from pipelines.tools.toolset import ToolSet
from pipelines.turns.playout import Playout


class ProviderError(RuntimeError):
    """A provider cannot be built (missing key, unknown name). The message names the provider and the fix."""

    def __init__(self, message: str, kind: str = ""):
        super().__init__(message)
        self.kind = kind


@dataclass
class BuildContext:
    agent: AgentConfig
    settings: Settings
    on_goodbye: Callable[[], Awaitable[None]] | None = None
    playout: Playout | None = None  # the carrier's audio output, for barge-in; None off the phone
    label: str = "call"
    tools: ToolSet | None = None  # offered to the LLM and registered on it by the architecture
    on_barge_in: Callable[[str, float], None] | None = None  # each barge-in's verdict and how long it took
    # The server's connection pool for OpenAI-compatible HTTP endpoints (openai_llm.shared_pool); None: the service
    # makes its own.
    http_pool: Any = None


Factory = Callable[[Any, BuildContext], FrameProcessor]
_REGISTRY: dict[tuple[str, str], Factory] = {}


def register(kind: str, name: str):
    def wrap(factory: Factory) -> Factory:
        _REGISTRY[(kind, name)] = factory
        return factory

    return wrap


def registered() -> set[tuple[str, str]]:
    return set(_REGISTRY)


def build(kind: str, section: Any, ctx: BuildContext) -> FrameProcessor:
    factory = _REGISTRY.get((kind, section.provider))
    if factory is None:
        raise ProviderError(f"{kind} provider {section.provider!r} is not available in this build", kind)
    try:
        return factory(section, ctx)
    except ProviderError as exc:
        exc.kind = kind
        raise
    except Exception as exc:
        raise ProviderError(f"{section.provider}: {exc}", kind) from exc


def _key(ctx: BuildContext, kind: str, provider: str) -> str:
    entry = catalog.provider(kind, provider)
    name = entry.key if entry else None
    secret = getattr(ctx.settings, name, None) if name else None
    if secret is None:
        raise ProviderError(f"{provider}: {name.upper() if name else 'an API key'} is not set")
    return secret.get_secret_value()


def _who(ctx: BuildContext, kind: str) -> str:
    """The agent's service, as log lines about its own base URL name it."""
    return f"agent {ctx.agent.name!r} {kind} ({ctx.label})"


def _key_for(ctx: BuildContext, kind: str, provider: str, own_url: str | None) -> str:
    """The server's key, unless the agent's own base URL is not trusted with it (see config/provider_trust.py)."""
    if provider_trust.withhold_server_key(ctx.settings, provider, own_url, who=_who(ctx, kind)):
        return provider_trust.NO_SERVER_KEY
    return _key(ctx, kind, provider)


def _public_only_for(ctx: BuildContext, kind: str, provider: str, own_url: str | None) -> str | None:
    """Who the agent's own base URL is, for log lines, when it may reach only public addresses; else None."""
    return _who(ctx, kind) if provider_trust.held_to_public_addresses(ctx.settings, provider, own_url) else None


def _default(kind: str, provider: str, attr: str) -> Any:
    entry = catalog.provider(kind, provider)
    return getattr(entry, attr) if entry else None


# What the builders below import on first use. The server imports them all at start-up instead, so the first call
# does not wait for them and what they create (the OpenAI SDK alone defines thousands of classes) is in place before
# the server's gc.freeze(): left for later, every full collection would walk it again, stalling all calls' audio.
PROVIDER_MODULES = (
    "pipelines.providers.whisper", "pipelines.providers.piper", "pipelines.providers.scripted",
    "pipelines.providers.deepgram", "pipelines.providers.openai_llm", "pipelines.providers.cartesia",
    "pipelines.providers.openai_realtime",
)


def import_all() -> None:
    """Import every provider's module, make the shared TLS context and warm the OpenAI SDK's request path
    (blocking: run it in a thread)."""
    for name in PROVIDER_MODULES:
        importlib.import_module(name)
    from pipelines.providers.openai_llm import warm_up
    from pipelines.providers.tls import tls_context

    tls_context()
    # httpx imports its transport (~20 ms) at its first client: the Deepgram SDK's for a call, a webhook's, a tool's.
    importlib.import_module("httpcore")
    # The first request through a real pool (warm_up's is answered in-process) imported anyio's asyncio backend, for
    # the pool's events: ~10 ms on the loop, under a worker's first turn (tests/test_first_request.py).
    importlib.import_module("anyio._backends._asyncio")
    warm_up()


# --- local providers: bundled weights, no account ---------------------------------------------------------------


@register("stt", "whisper")
def _whisper(section, ctx: BuildContext) -> FrameProcessor:
    from pipelines.providers.whisper import LocalWhisperSTTService

    return LocalWhisperSTTService(language=section.language or "en")


@register("tts", "piper")
def _piper(section, ctx: BuildContext) -> FrameProcessor:
    from pipelines.providers.piper import LocalPiperTTSService

    return LocalPiperTTSService(voice=section.voice or "en_US-joe-medium")


@register("llm", "scripted")
def _scripted(section, ctx: BuildContext) -> FrameProcessor:
    from pipelines.providers.scripted import ScriptedLLMService

    return ScriptedLLMService(section.script or ScriptConfig(), on_goodbye=ctx.on_goodbye)


# --- cloud providers: real SDK clients, endpoints redirectable to local emulators -------------------------------
# Deepgram and Cartesia endpoints come only from the settings; an agent's own base_url (OpenAI LLM and Realtime)
# gets the server's key only when trusted (_key_for).


@register("stt", "deepgram")
def _deepgram(section, ctx: BuildContext) -> FrameProcessor:
    from pipelines.providers.deepgram import QuietBatchingDeepgramSTT as DeepgramSTTService

    return DeepgramSTTService(
        api_key=_key(ctx, "stt", "deepgram"),
        base_url=ctx.settings.deepgram_base_url,
        settings=DeepgramSTTService.Settings(
            model=section.model or _default("stt", "deepgram", "default_model"), language=section.language
        ),
    )


@register("llm", "openai")
def _openai(section, ctx: BuildContext) -> FrameProcessor:
    from pipelines.providers.openai_llm import SharedTLSOpenAILLMService as OpenAILLMService

    return OpenAILLMService(
        api_key=_key_for(ctx, "llm", "openai", section.base_url),
        base_url=section.base_url or ctx.settings.openai_base_url,
        public_only_for=_public_only_for(ctx, "llm", "openai", section.base_url),
        pool=ctx.http_pool,
        # A reply that does not start (or stalls) within this fails the turn like any other LLM outage, instead of
        # leaving a caller in silence for the SDK's 600 s (pipecat's retry_on_timeout would retry without a bound).
        timeout_secs=section.timeout_secs,
        settings=OpenAILLMService.Settings(
            model=section.model or _default("llm", "openai", "default_model"),
            temperature=section.temperature,
            max_tokens=section.max_tokens,
        ),
    )


@register("tts", "cartesia")
def _cartesia(section, ctx: BuildContext) -> FrameProcessor:
    from pipelines.providers.cartesia import SharedTLSCartesiaTTS as CartesiaTTSService

    return CartesiaTTSService(
        api_key=_key(ctx, "tts", "cartesia"),
        url=ctx.settings.cartesia_url,
        settings=CartesiaTTSService.Settings(
            voice=section.voice or _default("tts", "cartesia", "default_voice"),
            model=section.model or _default("tts", "cartesia", "default_model"),
        ),
    )


@register("realtime", "openai")
def _openai_realtime(section, ctx: BuildContext) -> FrameProcessor:
    from pipelines.providers.openai_realtime import PhoneRealtimeService, session_properties

    return PhoneRealtimeService(
        api_key=_key_for(ctx, "realtime", "openai", section.base_url),
        base_url=section.base_url or ctx.settings.openai_realtime_url,
        public_only_for=_public_only_for(ctx, "realtime", "openai", section.base_url),
        timeout_secs=section.timeout_secs,
        settings=PhoneRealtimeService.Settings(
            model=section.model or _default("realtime", "openai", "default_model"),
            session_properties=session_properties(ctx.agent, section),
        ),
    )
