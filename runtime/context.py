"""The process-wide runtime the HTTP routes and call sessions share (one per app)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from starlette.requests import HTTPConnection

from config.settings import Settings
from runtime.capacity import Admission
from runtime.tokens import StreamTokens

if TYPE_CHECKING:
    from runtime.call_session import CallSession


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    db: async_sessionmaker
    tokens: StreamTokens
    instance_id: str = ""  # this server process's name in `calls.served_by` (runtime/recovery.py)
    sessions: dict[str, CallSession] = field(default_factory=dict)  # call id → live session
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
    # Connections to OpenAI-compatible HTTP endpoints, kept across calls, chat turns and post-call analyses
    # (openai_llm.shared_pool); made at start-up before the background workers.
    http_pool: Any = None
    # runtime/capacity.py: the settings' limits; the app's start-up gives it the loop's lag as well.
    admission: Admission = None  # type: ignore[assignment]  # made in __post_init__ when not given

    def __post_init__(self) -> None:
        if self.admission is None:
            self.admission = Admission(self.settings, self.sessions, db=self.db)


def runtime_of(conn: HTTPConnection) -> Runtime:
    return conn.app.state.runtime
