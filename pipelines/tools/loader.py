"""An agent's stored HTTP tools (AgentTool + ToolDef) as a ToolSet."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import async_sessionmaker

from config.settings import Settings
from pipelines.tools.toolset import ToolListener, ToolSet


async def load_toolset(db: async_sessionmaker, agent_id: str, settings: Settings, *,
                       listener: ToolListener | None = None) -> ToolSet:
    from runtime.store import (
        repo,  # the store is the runtime's; imported late to keep pipelines/ importable alone
    )

    definitions = await repo.agent_tool_definitions(db, agent_id)
    return ToolSet.from_definitions(definitions, allow_private=settings.tools_allow_private_networks,
                                    max_bytes=settings.tool_response_max_bytes, listener=listener)
