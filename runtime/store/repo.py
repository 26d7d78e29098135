"""The queries the runtime needs, one function each. Callers pass an `async_sessionmaker`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, literal, or_, select, true, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from config.agent import AgentConfig
from runtime import call_events
from runtime.store.models import (
    Agent,
    AgentTool,
    Call,
    ChatMessage,
    ChatSession,
    PhoneNumber,
    ToolDef,
    TranscriptEntry,
    Workspace,
    utcnow,
)


async def ensure_workspace(db: async_sessionmaker, name: str) -> Workspace:
    async with db() as s:
        ws = await s.scalar(select(Workspace).where(Workspace.name == name))
        if ws is None:
            ws = Workspace(name=name)
            s.add(ws)
            await s.commit()
        return ws


async def upsert_agent(db: async_sessionmaker, workspace_id: str, cfg: AgentConfig) -> Agent:
    """Create the agent, or replace the config of the agent with the same name in the workspace."""
    data = cfg.model_dump(mode="json")
    async with db() as s:
        agent = await s.scalar(select(Agent).where(Agent.workspace_id == workspace_id, Agent.name == cfg.name))
        if agent is None:
            agent = Agent(workspace_id=workspace_id, name=cfg.name, architecture=cfg.architecture, config=data)
            s.add(agent)
        else:
            agent.architecture = cfg.architecture
            agent.config = data
            agent.updated_at = utcnow()
        await s.commit()
        return agent


async def find_agent(db: async_sessionmaker, name_or_id: str, workspace_id: str | None = None) -> Agent | None:
    async with db() as s:
        q = select(Agent).where((Agent.id == name_or_id) | (Agent.name == name_or_id))
        if workspace_id:
            q = q.where(Agent.workspace_id == workspace_id)
        found = list(await s.scalars(q.limit(2)))
        if len(found) > 1:
            raise LookupError(f"agent name {name_or_id!r} exists in several workspaces; use its id")
        return found[0] if found else None


async def get_agent(db: async_sessionmaker, agent_id: str) -> Agent | None:
    async with db() as s:
        return await s.get(Agent, agent_id)


async def map_number(db: async_sessionmaker, number: str, agent: Agent) -> PhoneNumber:
    """Map an E.164 number to an agent (moving it if it was mapped elsewhere)."""
    async with db() as s:
        row = await s.scalar(select(PhoneNumber).where(PhoneNumber.number == number))
        if row is None:
            row = PhoneNumber(number=number, workspace_id=agent.workspace_id, agent_id=agent.id)
            s.add(row)
        else:
            row.workspace_id, row.agent_id = agent.workspace_id, agent.id
        await s.commit()
        return row


async def agent_for_number(db: async_sessionmaker, number: str) -> Agent | None:
    async with db() as s:
        return await s.scalar(
            select(Agent).join(PhoneNumber, PhoneNumber.agent_id == Agent.id).where(PhoneNumber.number == number)
        )


async def create_call(db: async_sessionmaker, **fields) -> Call:
    async with db() as s:
        call = Call(**fields)
        s.add(call)
        await s.commit()
        return call


async def get_call(db: async_sessionmaker, call_id: str) -> Call | None:
    async with db() as s:
        return await s.get(Call, call_id)


async def claim_stream(db: async_sessionmaker, call_id: str, stream_sid: str, call_sid: str | None,
                       served_by: str | None = None) -> bool:
    """Attach the media stream to a call that has none yet. False when the call already streamed or ended,
    so one token cannot open two sockets."""
    async with db() as s:
        result = await s.execute(
            update(Call)
            .where(Call.id == call_id, Call.stream_sid.is_(None), Call.ended_at.is_(None))
            .values(stream_sid=stream_sid, twilio_call_sid=call_sid, status="in-progress", started_at=utcnow(),
                    served_by=served_by, heartbeat_at=utcnow())
        )
        if result.rowcount != 1:
            return False
        await call_events.call_started(s, await s.get(Call, call_id))
        await s.commit()
    call_events.after_commit()
    return True


async def add_transcript_entry(
    db: async_sessionmaker, call_id: str, role: str, text: str, start_secs: float, end_secs: float, interrupted: bool,
    **latency: int | None,
) -> None:
    """One turn; an agent turn that answered the caller also carries its latencies (latency_ms, stt_ms, …)."""
    async with db() as s:
        s.add(
            TranscriptEntry(
                call_id=call_id, role=role, text=text, start_secs=start_secs, end_secs=end_secs, interrupted=interrupted,
                **latency,
            )
        )
        await s.commit()


async def add_tool_entry(
    db: async_sessionmaker, call_id: str, *, name: str, tool_call_id: str, arguments: dict[str, Any],
    result: dict[str, Any] | None, error: str | None, start_secs: float, end_secs: float,
) -> None:
    """One tool call in a call's transcript (role `tool`); `text` is a one-line summary for plain readers."""
    async with db() as s:
        s.add(TranscriptEntry(
            call_id=call_id, role="tool", text=f"{name}: {error or 'ok'}"[:1000], start_secs=start_secs,
            end_secs=end_secs, interrupted=error == "cancelled", tool_name=name, tool_call_id=tool_call_id,
            tool_arguments=arguments, tool_result=result, tool_error=error,
        ))
        await s.commit()


async def agent_tool_definitions(db: async_sessionmaker, agent_id: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(stored definition, the agent's attachment config) of each HTTP tool attached to an agent, in attachment
    order."""
    async with db() as s:
        rows = await s.execute(select(ToolDef.definition, AgentTool.config)
                               .join(AgentTool, AgentTool.tool_id == ToolDef.id)
                               .where(AgentTool.agent_id == agent_id).order_by(AgentTool.created_at, ToolDef.name))
        return [(dict(d), dict(c or {})) for d, c in rows]


async def claim_chat_turn(db: async_sessionmaker, session_id: str, lease: timedelta) -> bool:
    """Take the session's turn lease. False while another turn holds it (in any server process) or once closed."""
    now = utcnow()
    async with db() as s:
        result = await s.execute(
            update(ChatSession)
            .where(ChatSession.id == session_id, ChatSession.closed_at.is_(None),
                   ChatSession.busy_until.is_(None) | (ChatSession.busy_until < now))
            .values(busy_until=now + lease, updated_at=now)
        )
        await s.commit()
        return result.rowcount == 1


async def release_chat_turn(db: async_sessionmaker, session_id: str) -> None:
    async with db() as s:
        await s.execute(update(ChatSession).where(ChatSession.id == session_id).values(busy_until=None))
        await s.commit()


async def add_chat_message(db: async_sessionmaker, session_id: str, role: str, content: str = "", *,
                           tool_name: str | None = None, tool_call_id: str | None = None,
                           tool_arguments: dict[str, Any] | None = None, tool_result: dict[str, Any] | None = None,
                           tool_error: str | None = None) -> ChatMessage:
    async with db() as s:
        message = ChatMessage(session_id=session_id, role=role, content=content, tool_name=tool_name,
                              tool_call_id=tool_call_id, tool_arguments=tool_arguments, tool_result=tool_result,
                              tool_error=tool_error)
        s.add(message)
        await s.commit()
        return message


async def chat_messages(db: async_sessionmaker, session_id: str) -> list[ChatMessage]:
    async with db() as s:
        return list(await s.scalars(select(ChatMessage).where(ChatMessage.session_id == session_id)
                                    .order_by(ChatMessage.id)))


async def transcript(db: async_sessionmaker, call_id: str) -> list[TranscriptEntry]:
    async with db() as s:
        return list(
            await s.scalars(select(TranscriptEntry).where(TranscriptEntry.call_id == call_id).order_by(TranscriptEntry.id))
        )


async def end_call(
    db: async_sessionmaker, call_id: str, *, status: str, reason: str, detail: str | None = None,
    ended_at: datetime | None = None, ended_by: str | None = None, unless_streamed: bool = False,
    record: dict[str, Any] | None = None,
) -> bool:
    """Close the call once; a second close (e.g. a late socket error) changes nothing. `unless_streamed`: only a
    call whose media stream never started (one that did is closed by its session, with the session's reason).
    `record`: more columns to set with the close (usage, cost, latency, recording). Closing queues the call's
    webhook events and its analysis in the same transaction."""
    async with db() as s:
        call = await _close_in(s, call_id, Closing(status, reason, detail, ended_by, unless_streamed), ended_at,
                               record)
        if call is None:
            return False
        await s.commit()
    call_events.after_commit(ended=call)
    return True


@dataclass(frozen=True)
class Closing:
    """How `end_call` closes a call (see there)."""

    status: str
    reason: str
    detail: str | None = None
    ended_by: str | None = None
    unless_streamed: bool = False


async def _close_in(s, call_id: str, closing: Closing, ended_at: datetime | None = None,
                    record: dict[str, Any] | None = None) -> Call | None:
    """`end_call` within the caller's transaction: the closed call, or None when it was not open."""
    open_call = [Call.id == call_id, Call.ended_at.is_(None)]
    if closing.unless_streamed:
        open_call.append(Call.stream_sid.is_(None))
    result = await s.execute(
        update(Call)
        .where(*open_call)
        .values(status=closing.status, disconnection_reason=closing.reason, error_detail=closing.detail,
                ended_at=ended_at or utcnow(), ended_by=closing.ended_by, **(record or {}))
    )
    if result.rowcount != 1:
        return None
    call = await s.get(Call, call_id)
    await call_events.call_ended(s, call)
    return call


# Twilio's call statuses in the order a call goes through them; the final ones share the last rank. Callbacks may
# arrive out of order or twice, so a status is only ever replaced by a later one.
CARRIER_RANK = {"queued": 0, "initiated": 1, "ringing": 2, "in-progress": 3,
                "completed": 4, "busy": 4, "no-answer": 4, "failed": 4, "canceled": 4}
CARRIER_FINAL = frozenset(s for s, rank in CARRIER_RANK.items() if rank == 4)


async def find_call_by_sid(db: async_sessionmaker, call_sid: str) -> Call | None:
    async with db() as s:
        return await s.scalar(select(Call).where(Call.twilio_call_sid == call_sid)
                              .order_by(Call.created_at.desc()).limit(1))


async def update_call_status(
    db: async_sessionmaker, call_id: str, carrier_status: str, *, call_sid: str | None = None,
    duration_secs: int | None = None, answered_by: str | None = None,
) -> bool:
    """Record a Twilio status for the call; True when it moved the call forward.

    One conditional UPDATE, so that two processes handling callbacks for the same call cannot move it backwards.
    Our own `status` follows the carrier's while the call is open (never backwards either: the media stream may
    already have made it `in-progress`); closing it is `end_call`'s. After a final status only a missing duration
    is filled in. A call already tied to another CallSid is left alone."""
    async with db() as s:
        moved = await _status_in(s, call_id, carrier_status, call_sid, duration_secs, answered_by)
        await s.commit()
        return moved


async def final_call_status(
    db: async_sessionmaker, call_id: str, carrier_status: str, closing: Closing, *, call_sid: str | None = None,
    duration_secs: int | None = None, answered_by: str | None = None,
) -> tuple[bool, bool]:
    """`update_call_status` with a final status, and `end_call(closing)` in the same transaction, so that no reader
    sees the carrier's end (and the duration) on a call that is still open. (moved forward, closed)."""
    async with db() as s:
        moved = await _status_in(s, call_id, carrier_status, call_sid, duration_secs, answered_by)
        call = await _close_in(s, call_id, closing)
        await s.commit()
    if call is not None:
        call_events.after_commit(ended=call)
    return moved, call is not None


async def _status_in(s, call_id: str, carrier_status: str, call_sid: str | None, duration_secs: int | None,
                     answered_by: str | None) -> bool:
    rank = CARRIER_RANK[carrier_status]
    earlier = [name for name, r in CARRIER_RANK.items() if r < rank]
    values: dict[str, Any] = {"carrier_status": carrier_status}
    if call_sid:
        values["twilio_call_sid"] = func.coalesce(Call.twilio_call_sid, call_sid)
    if answered_by:
        values["answered_by"] = func.coalesce(Call.answered_by, answered_by)
    if duration_secs is not None:
        values["duration_secs"] = func.coalesce(Call.duration_secs, duration_secs)
    if rank < 4:
        values["status"] = case((Call.ended_at.is_(None) & Call.status.in_(earlier), carrier_status),
                                else_=Call.status)
    if carrier_status == "in-progress":
        values["started_at"] = func.coalesce(Call.started_at, literal(utcnow(), Call.started_at.type))
    same_call = or_(Call.twilio_call_sid.is_(None), Call.twilio_call_sid == call_sid) if call_sid else true()
    moved = await s.execute(
        update(Call).where(Call.id == call_id, same_call,
                           or_(Call.carrier_status.is_(None), Call.carrier_status.in_(earlier)))
        .values(**values))
    if moved.rowcount == 0 and duration_secs is not None and carrier_status in CARRIER_FINAL:
        await s.execute(update(Call).where(Call.id == call_id, same_call, Call.duration_secs.is_(None),
                                           Call.carrier_status.in_(CARRIER_FINAL))
                        .values(duration_secs=duration_secs))
    return moved.rowcount == 1
