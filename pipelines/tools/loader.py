"""An agent's stored HTTP tools (AgentTool + ToolDef) as a ToolSet."""

from __future__ import annotations

from typing import Any

from loguru import logger
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import async_sessionmaker

from config.settings import Settings
from pipelines.tools.attachment import ToolAttachment
from pipelines.tools.toolset import ToolListener, ToolSet


def attachment_of(definition: dict[str, Any], config: dict[str, Any]) -> ToolAttachment | None:
    """The agent's settings for one tool, or None when they no longer apply (logged, never fatal to a call).

    The API checks them when the tool is attached, but the tool's definition may have changed since: a fixed
    argument it no longer takes is still sent (its schema then decides the call), and the log says so."""
    if not config:
        return None
    name = definition.get("name")
    try:
        attachment = ToolAttachment.model_validate(config)
    except ValidationError as exc:
        logger.warning(f"tool {name}: this agent's attachment config is not valid, so it is not used: "
                       f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}")
        return None
    for argument, problem in attachment.argument_problems(definition.get("parameters") or {}):
        logger.warning(f"tool {name}: fixed argument {argument!r}: {problem} (the tool changed since it was attached)")
    return attachment


async def load_toolset(db: async_sessionmaker, agent_id: str, settings: Settings, *,
                       listener: ToolListener | None = None) -> ToolSet:
    from runtime.store import (
        repo,  # the store is the runtime's; imported late to keep pipelines/ importable alone
    )

    stored = await repo.agent_tool_definitions(db, agent_id)
    return ToolSet.from_definitions([(d, attachment_of(d, c)) for d, c in stored],
                                    allow_private=settings.tools_allow_private_networks,
                                    max_bytes=settings.tool_response_max_bytes, listener=listener)
