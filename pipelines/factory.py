"""Config → pipeline: dispatch on the agent's architecture."""

from __future__ import annotations

import importlib

from pipecat.transports.base_transport import BaseTransport

from config.agent import AgentConfig
from pipelines.call_pipeline import CallPipeline
from pipelines.providers.registry import BuildContext


# Imported lazily by build_call_pipeline, so at the first call unless the server imports them at start-up (the
# `pipeline` module and what it pulls in: ~24 ms, on the event loop, under every call in progress).
ARCHITECTURE_MODULES = ("pipelines.architectures.pipeline", "pipelines.architectures.realtime")


class UnsupportedArchitecture(RuntimeError):
    pass


def import_architectures() -> None:
    """Import every phone architecture's module (blocking: run it in a thread)."""
    for name in ARCHITECTURE_MODULES:
        importlib.import_module(name)


def build_call_pipeline(agent: AgentConfig, transport: BaseTransport, ctx: BuildContext) -> CallPipeline:
    if agent.architecture == "pipeline":
        from pipelines.architectures import pipeline

        return pipeline.build(agent, transport, ctx)
    if agent.architecture == "realtime":
        from pipelines.architectures import realtime

        return realtime.build(agent, transport, ctx)
    raise UnsupportedArchitecture(f"agent {agent.name!r} is a 'text' agent: text agents do not take phone calls")


def local_models_needed(agent: AgentConfig) -> set[str]:
    """The shared local models this agent's calls use, so the server can load them before the first call."""
    needed = {"silero"} if agent.architecture == "pipeline" else set()
    if agent.architecture == "pipeline" and agent.turn.strategy == "smart_turn":
        needed.add("smart_turn")
    if agent.transcriber and agent.transcriber.provider == "whisper":
        needed.add("whisper")
    if agent.tts and agent.tts.provider == "piper":
        needed.add("piper")
    return needed
