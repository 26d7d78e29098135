"""/api/v1/chat: talking to an agent in text (Upivia's chat API shape), with its tools.

A session belongs to an agent; each turn streams Server-Sent Events (`message_delta`, `tool_executing`, `tool_done`,
then `done`, or `error` when the LLM fails, after which the session is still usable). The history lives in the
database, so any server process sharing it can take the next turn; one turn at a time per session (409 otherwise).
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import false, select
from starlette.requests import ClientDisconnect

from config.agent import AgentConfig
from pipelines.architectures import text as text_arch
from pipelines.tools import load_toolset, payload_text
from runtime.api.auth import Caller, Principal
from runtime.api.errors import COMMON_ERRORS, ApiError, bad_request
from runtime.api.lookup import ROW_ID, owned
from runtime.api.schemas import DataList, UTCDatetime
from runtime.context import Runtime, runtime_of
from runtime.store import repo
from runtime.store.models import Agent, ChatMessage, ChatSession, utcnow

router = APIRouter(prefix="/api/v1/chat", tags=["chat"], responses=COMMON_ERRORS)

# Longer than a turn may run, so a live turn keeps its lease; short enough that a crashed server's lease lapses.
TURN_LEASE = timedelta(seconds=text_arch.TURN_TIMEOUT_SECS + 30)
MAX_MESSAGE_CHARS = 16000
_turns: set[asyncio.Task] = set()  # running turns, referenced so they finish even if the client goes away


class EventStream(StreamingResponse):
    """Server-Sent Events, streamed to the end of the turn without watching `receive` for a disconnect.

    Starlette's StreamingResponse cancels the stream when the client leaves, which would abandon a turn half
    stored. Here the turn runs to its end (bounded by its timeout) whether or not anyone still reads it, so its
    messages and tool calls are stored whole; a send to a closed socket just fails."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.stream_response(send)
        except OSError:
            raise ClientDisconnect() from None


# --- shapes ---------------------------------------------------------------------------------------------------------

class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: str = Field(max_length=64, description="The agent to talk to (any architecture with an `llm`)")


class ChatSessionOut(BaseModel):
    id: str
    agent_id: str | None = Field(description="None once the agent has been deleted")
    status: Literal["active", "closed"]
    created_at: UTCDatetime
    updated_at: UTCDatetime
    closed_at: UTCDatetime | None


class ToolCallOut(BaseModel):
    call_id: str | None
    name: str | None
    arguments: dict[str, Any] | None
    result: dict[str, Any] | None = Field(description='What the LLM was given: {"result": ...} or {"error": ...}')
    error: str | None


class ChatMessageOut(BaseModel):
    id: int
    role: Literal["user", "assistant", "tool"]
    content: str = Field(description="The text; for a tool call, its result (or error) as text")
    tool: ToolCallOut | None = Field(description="The call, for role `tool`")
    created_at: UTCDatetime


class ChatSessionDetail(ChatSessionOut):
    messages: list[ChatMessageOut]


class TurnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_id: str = Field(max_length=64)
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)

    @field_validator("message")
    @classmethod
    def _text(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        if not value.strip():
            raise ValueError("must not be blank")
        return value


def _session_out(session: ChatSession) -> ChatSessionOut:
    return ChatSessionOut(id=session.id, agent_id=session.agent_id, status=session.status,
                          created_at=session.created_at, updated_at=session.updated_at, closed_at=session.closed_at)


def _message_out(m: ChatMessage) -> ChatMessageOut:
    tool = None
    if m.role == "tool":
        tool = ToolCallOut(call_id=m.tool_call_id, name=m.tool_name, arguments=m.tool_arguments, result=m.tool_result,
                           error=m.tool_error)
    return ChatMessageOut(id=m.id, role=m.role, content=m.content, tool=tool, created_at=m.created_at)


async def _own_session(s, p: Principal, session_id: str) -> ChatSession:
    return await owned(s, ChatSession, session_id, p, "chat session")


# --- sessions -------------------------------------------------------------------------------------------------------

@router.post("/sessions", response_model=ChatSessionOut, status_code=201, summary="Start a chat session with an agent")
async def create_session(body: SessionIn, p: Caller, request: Request) -> ChatSessionOut:
    async with runtime_of(request).db() as s:
        agent = await owned(s, Agent, body.agent_id, p, "agent")
        if not (agent.config or {}).get("llm"):  # a realtime agent: every turn would fail, so refuse it here, once
            message = f"agent {agent.name!r} has no `llm` section to chat with"
            raise bad_request(f"agent_id: {message}", [{"field": "agent_id", "message": message}])
        session = ChatSession(workspace_id=p.workspace_id, agent_id=agent.id, status="active")
        s.add(session)
        await s.commit()
        return _session_out(session)


@router.get("/sessions", response_model=DataList[ChatSessionOut], summary="The workspace's chat sessions, newest first")
async def list_sessions(p: Caller, request: Request,
                        agent_id: str | None = Query(default=None, max_length=64)) -> DataList[ChatSessionOut]:
    async with runtime_of(request).db() as s:
        q = select(ChatSession).where(ChatSession.workspace_id == p.workspace_id)
        if agent_id is not None:
            q = q.where(ChatSession.agent_id == agent_id) if ROW_ID.match(agent_id) else q.where(false())
        rows = await s.scalars(q.order_by(ChatSession.created_at.desc(), ChatSession.id).limit(500))
        return DataList[ChatSessionOut](data=[_session_out(r) for r in rows])


@router.get("/sessions/{session_id}", response_model=ChatSessionDetail,
            summary="A chat session with its whole history (user, assistant and tool messages in order)")
async def get_session(session_id: str, p: Caller, request: Request) -> ChatSessionDetail:
    rt = runtime_of(request)
    async with rt.db() as s:
        session = await _own_session(s, p, session_id)
    messages = await repo.chat_messages(rt.db, session.id)
    return ChatSessionDetail(**_session_out(session).model_dump(), messages=[_message_out(m) for m in messages])


async def _close(request: Request, p: Principal, session_id: str) -> ChatSessionOut:
    async with runtime_of(request).db() as s:
        session = await owned(s, ChatSession, session_id, p, "chat session", lock=True)
        if session.closed_at is None:
            session.status, session.closed_at = "closed", utcnow()
            await s.commit()
        return _session_out(session)


@router.delete("/sessions/{session_id}", response_model=ChatSessionOut,
               summary="Close a chat session (its history is kept; further turns are refused)")
async def close_session(session_id: str, p: Caller, request: Request) -> ChatSessionOut:
    return await _close(request, p, session_id)


@router.delete("/sessions", response_model=ChatSessionOut, summary="Close a chat session (Upivia's form)")
async def close_session_by_query(p: Caller, request: Request,
                                 session_id: str = Query(max_length=64)) -> ChatSessionOut:
    return await _close(request, p, session_id)


# --- turns ----------------------------------------------------------------------------------------------------------

_TURN_DOC = """Streams `text/event-stream`. Events, each `event: NAME` with a JSON `data:` line:
`message_delta` {text}; `tool_executing` {tool_call_id, name, arguments}; `tool_done` {tool_call_id, name, arguments,
result, error, duration_ms}; then `done` {session_id, text} or `error` {code, message} (the LLM or its provider
failed; the session stays usable). Refused before streaming: 404 unknown session, 409 `session_closed`,
`turn_in_progress` or `agent_deleted`."""


@router.post("/turn", response_class=EventStream, summary="Send a message; the reply streams as SSE",
             description=_TURN_DOC, responses={200: {"description": "A stream of Server-Sent Events"}})
async def chat_turn(body: TurnIn, p: Caller, request: Request) -> EventStream:
    rt = runtime_of(request)
    async with rt.db() as s:
        session = await _own_session(s, p, body.session_id)
        agent = await s.get(Agent, session.agent_id) if session.agent_id else None
    if session.closed_at is not None:
        raise ApiError(409, "session_closed", "this chat session is closed")
    if agent is None:
        raise ApiError(409, "agent_deleted", "the agent of this chat session has been deleted")
    if not await repo.claim_chat_turn(rt.db, session.id, TURN_LEASE):
        async with rt.db() as s:
            closed = (await s.get(ChatSession, session.id)).closed_at is not None
        if closed:
            raise ApiError(409, "session_closed", "this chat session is closed")
        raise ApiError(409, "turn_in_progress", "a turn is already running in this chat session; wait for its `done`")
    try:
        config = AgentConfig.model_validate(agent.config)
        history = await repo.chat_messages(rt.db, session.id)
        await repo.add_chat_message(rt.db, session.id, "user", body.message)
        toolset = await load_toolset(rt.db, agent.id, rt.settings)
    except BaseException:
        await repo.release_chat_turn(rt.db, session.id)
        raise
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.create_task(_run_turn(rt, session.id, config, history, body.message, toolset, queue))
    _turns.add(task)
    task.add_done_callback(_turns.discard)
    return EventStream(_stream(queue), media_type="text/event-stream",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


async def _stream(queue: asyncio.Queue[str | None]):
    while (chunk := await queue.get()) is not None:
        yield chunk


def _clean(text: str) -> str:
    return text.replace("\x00", "")  # PostgreSQL text cannot hold NUL, and a tool's body may contain one


async def _run_turn(rt: Runtime, session_id: str, config: AgentConfig, history: list[ChatMessage], message: str,
                    toolset, queue: asyncio.Queue[str | None]) -> None:
    """Runs to the end even if the client disconnects, storing each message as it completes."""
    final = _sse("error", {"code": "internal_error", "message": "internal error"})
    try:
        messages = text_arch.context_messages(config.system_prompt, history)
        async for event in text_arch.stream_turn(config, messages, message, settings=rt.settings, toolset=toolset,
                                                http_pool=rt.http_pool):
            if event.type == "assistant_message":
                await repo.add_chat_message(rt.db, session_id, "assistant", _clean(event.data["text"]))
            elif event.type == "tool_done":
                await _store_tool(rt, session_id, event.data)
            if event.type == "done":
                final = _sse("done", {"session_id": session_id, **event.data})
            elif event.type == "error":
                final = _sse("error", event.data)
            elif event.type != "assistant_message":
                queue.put_nowait(_sse(event.type, event.data))
    except Exception as exc:
        logger.opt(exception=exc).error(f"chat session {session_id}: turn failed")
    finally:
        try:
            # Released before the last event goes out: a client may send its next turn the moment it reads `done`.
            await repo.release_chat_turn(rt.db, session_id)
        finally:
            queue.put_nowait(final)
            queue.put_nowait(None)


async def _store_tool(rt: Runtime, session_id: str, data: dict[str, Any]) -> None:
    result = data.get("result")
    text, _failed = payload_text(result) if result is not None else (data.get("error") or "", True)
    await repo.add_chat_message(
        rt.db, session_id, "tool", _clean(text)[:4000], tool_name=data["name"], tool_call_id=data["tool_call_id"],
        tool_arguments=data.get("arguments") or {}, tool_result=result,
        tool_error=_clean(data["error"]) if data.get("error") else None,
    )

