"""Local emulators of the cloud providers, speaking each one's real wire protocol.

The real SDK clients and pipecat services run against them unchanged, so agents can be tested with no account:
`voxline emulate deepgram|openai|cartesia|openai-realtime`, or in-process with `await start(provider)`.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.providers.emulators.rules import Rules
from pipelines.providers.emulators.server import Running


@dataclass(frozen=True)
class Provider:
    module: str
    default_port: int
    models: tuple[str, ...]  # local models to load before saying "ready"
    key_env: str
    uses_rules: bool = False


PROVIDERS = {
    "deepgram": Provider("deepgram", 8101, ("silero", "whisper"), "DEEPGRAM_API_KEY"),
    "openai": Provider("openai_chat", 8102, (), "OPENAI_API_KEY", uses_rules=True),
    "cartesia": Provider("cartesia", 8103, ("piper",), "CARTESIA_API_KEY"),
    "openai-realtime": Provider("openai_realtime", 8104, ("silero", "whisper", "piper"), "OPENAI_API_KEY",
                                uses_rules=True),
}


TOKEN_PACED = "openai"  # the one emulator that streams a reply's chunks, so the one `token_ms` applies to


async def start(provider: str, *, host: str = "127.0.0.1", port: int = 0, rules: Rules | None = None,
                latency_ms: int = 0, token_ms: int = 0) -> Running:
    """`token_ms`: openai's pace between a streamed reply's chunks (ChatEmulator)."""
    spec = PROVIDERS[provider]
    module = importlib.import_module(f"{__name__}.{spec.module}")
    extra = {"rules": rules} if spec.uses_rules else {}
    if token_ms:
        if provider != TOKEN_PACED:
            raise ValueError(f"a token pace applies to {TOKEN_PACED}, not {provider}")
        extra["token_ms"] = token_ms
    return await module.start(host, port, latency_ms=latency_ms, **extra)


def settings_hint(provider: str, running: Running) -> list[str]:
    """What to set so that voxline uses this emulator."""
    key = f"{PROVIDERS[provider].key_env}=any-non-empty-value"
    if provider == "openai-realtime":
        return [f"VOXLINE_OPENAI_REALTIME_URL={running.url}",
                f"or per agent: realtime: {{provider: openai, base_url: {running.url}}} "
                "(with VOXLINE_PROVIDERS_ALLOW_PRIVATE_NETWORKS=true: an agent's own endpoint on this machine is "
                "refused otherwise)", key]
    return [f"{running.setting}={running.url}", key]


async def serve(provider: str, *, host: str, port: int, rules: Rules | None, latency_ms: int,
                ready: Callable[[Running], None], token_ms: int = 0) -> None:
    """Run until cancelled (Ctrl-C). Models load first, so that the first request is not the slow one."""
    from pipelines.providers import local_models

    for name in PROVIDERS[provider].models:
        await local_models.load(name)
    running = await start(provider, host=host, port=port, rules=rules, latency_ms=latency_ms, token_ms=token_ms)
    try:
        ready(running)
        await asyncio.Event().wait()
    finally:
        await running.close()
