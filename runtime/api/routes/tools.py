"""/api/v1/tool-endpoint-defs and /api/v1/agents/{agent_id}/tools: HTTP tools an agent's LLM may call.

A definition is stored whole as the validated `ToolIn`, like agent configs, so what is read back is exactly what was
accepted; agents refer to definitions, each attachment with its own settings (`pipelines/tools/attachment.py`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Request
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from config.text import no_nul
from pipelines.tools.attachment import ToolAttachment, check_headers
from pipelines.tools.schema import check_schema, ref_problems
from runtime.api.auth import Caller, Principal
from runtime.api.errors import COMMON_ERRORS, ApiError, bad_request, not_found
from runtime.api.lookup import ROW_ID, commit_or_conflict, name_taken, owned
from runtime.api.schemas import DataList, UTCDatetime
from runtime.context import runtime_of
from runtime.store.models import Agent, AgentTool, ToolDef, utcnow

router = APIRouter(prefix="/api/v1", tags=["tools"], responses=COMMON_ERRORS)

MAX_ATTACHED = 128


def _empty_object() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


# --- shapes ---------------------------------------------------------------------------------------------------------

class _ToolFields(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="What the LLM calls it; unique per workspace")
    description: str = Field(min_length=1, max_length=1024, description="Tells the LLM when to call it")
    url: str = Field(max_length=2048, examples=["https://example.com/hooks/book"])
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every call of the tool")
    parameters: dict[str, Any] = Field(
        default_factory=_empty_object, description='A JSON Schema for the arguments; its "type" must be "object"',
    )
    timeout_secs: float = Field(default=10.0, gt=0, le=60)


class ToolIn(_ToolFields):
    # Refusing unknown keys beats ignoring them: a client should not believe it set something that was dropped.
    model_config = ConfigDict(extra="forbid")

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        return no_nul(value)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
        except ValueError as exc:  # e.g. an unbalanced IPv6 bracket
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return no_nul(value)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)

    @field_validator("parameters")
    @classmethod
    def _json_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError('must be a JSON Schema with "type": "object"')
        if not isinstance(value.get("$schema", ""), str):  # validator_for looks it up as a dict key
            raise ValueError("not a valid JSON Schema: $schema must be a string (a meta-schema URI)")
        try:
            check_schema(value)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.path)
            raise ValueError(f"not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}") from None
        return value


def _refs_checked(body: ToolIn) -> ToolIn:
    """`body`, after refusing a `$ref` that is not local or leads nowhere (here, not in ToolIn, so the error can name
    where in `parameters` it is): nothing is ever fetched for a tool's schema, and one that cannot be applied would
    fail every call of the tool."""
    problems = ref_problems(body.parameters)
    if problems:
        details = [{"field": f"parameters.{where}", "message": message} for where, message in problems]
        raise bad_request(f"{details[0]['field']}: {details[0]['message']}", details)
    return body


class ToolOut(_ToolFields):
    id: str
    created_at: UTCDatetime
    updated_at: UTCDatetime


class ToolDeleted(BaseModel):
    id: str
    deleted: bool


class AttachIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool_id: str = Field(max_length=64)
    config: ToolAttachment = Field(default_factory=ToolAttachment, description="This agent's settings for the tool")


class AgentToolOut(BaseModel):
    tool_id: str
    name: str
    config: dict[str, Any] = Field(description="The settings as given when attached (see the attach body)")
    attached_at: UTCDatetime


AttachList = Annotated[list[AttachIn], Body(max_length=MAX_ATTACHED)]


# --- queries --------------------------------------------------------------------------------------------------------

def _out(tool: ToolDef) -> ToolOut:
    return ToolOut(**tool.definition, id=tool.id, created_at=tool.created_at, updated_at=tool.updated_at)


def _conflict(name: str) -> ApiError:
    return ApiError(409, "conflict", f"name: a tool named {name!r} already exists in this workspace")


async def _own_tool(s, p: Principal, tool_id: str, *, lock: bool = False) -> ToolDef:
    return await owned(s, ToolDef, tool_id, p, "tool", lock=lock)


async def _own_agent(s, p: Principal, agent_id: str) -> Agent:
    # The lock serialises changes to one agent's tool set on PostgreSQL; SQLite has a single writer anyway.
    return await owned(s, Agent, agent_id, p, "agent", lock=True)


async def _save(s, name: str) -> None:
    await commit_or_conflict(s, _conflict(name))


async def _attached(s, agent_id: str) -> DataList[AgentToolOut]:
    rows = await s.execute(select(AgentTool, ToolDef.name).join(ToolDef, ToolDef.id == AgentTool.tool_id)
                           .where(AgentTool.agent_id == agent_id).order_by(AgentTool.created_at, ToolDef.name))
    return DataList[AgentToolOut](data=[
        AgentToolOut(tool_id=link.tool_id, name=name, config=link.config or {}, attached_at=link.created_at)
        for link, name in rows
    ])


async def _checked(s, p: Principal, items: list[AttachIn]) -> dict[str, dict[str, Any]]:
    """tool id → config as stored, after checking every tool is the caller's, none is listed twice, and each
    fixed argument is one the tool takes, with a value its schema accepts."""
    wanted: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(items):
        if item.tool_id in wanted:
            message = "listed twice"
            raise bad_request(f"{i}.tool_id: {message}", [{"field": f"{i}.tool_id", "message": message}])
        wanted[item.tool_id] = item.config.model_dump(mode="json", exclude_unset=True)
    for i, item in enumerate(items):
        tool = await _own_tool(s, p, item.tool_id)
        problems = item.config.argument_problems(tool.definition.get("parameters") or {})
        if problems:
            details = [{"field": f"{i}.config.arguments.{name}", "message": message} for name, message in problems]
            raise bad_request(f"{details[0]['field']}: {details[0]['message']}", details)
    return wanted


async def _change_tools(request: Request, p: Principal, agent_id: str, items: list[AttachIn], *,
                        replace: bool) -> DataList[AgentToolOut]:
    async with runtime_of(request).db() as s:
        agent = await _own_agent(s, p, agent_id)
        wanted = await _checked(s, p, items)
        links = await s.scalars(select(AgentTool).where(AgentTool.agent_id == agent.id))
        current = {link.tool_id: link for link in links}
        for tool_id, link in current.items():
            if tool_id in wanted:
                link.config = wanted[tool_id]  # attached_at stays: the tool has been attached since then
            elif replace:
                await s.delete(link)
        s.add_all(AgentTool(agent_id=agent.id, tool_id=t, config=c) for t, c in wanted.items() if t not in current)
        try:
            await s.commit()
        except IntegrityError:  # a tool deleted (or attached) by a concurrent request
            await s.rollback()
            raise ApiError(409, "conflict", "the agent's tools changed concurrently; retry") from None
        return await _attached(s, agent.id)


# --- tool definitions -----------------------------------------------------------------------------------------------

@router.get("/tool-endpoint-defs", response_model=DataList[ToolOut], summary="List the workspace's HTTP tools")
async def list_tools(p: Caller, request: Request) -> DataList[ToolOut]:
    async with runtime_of(request).db() as s:
        rows = await s.scalars(select(ToolDef).where(ToolDef.workspace_id == p.workspace_id).order_by(ToolDef.name))
        return DataList[ToolOut](data=[_out(t) for t in rows])


@router.post("/tool-endpoint-defs", response_model=ToolOut, status_code=201, summary="Define an HTTP tool")
async def create_tool(body: ToolIn, p: Caller, request: Request) -> ToolOut:
    _refs_checked(body)
    async with runtime_of(request).db() as s:
        if await name_taken(s, ToolDef, p.workspace_id, body.name):
            raise _conflict(body.name)
        tool = ToolDef(workspace_id=p.workspace_id, name=body.name, definition=body.model_dump(mode="json"))
        s.add(tool)
        await _save(s, body.name)
        return _out(tool)


@router.get("/tool-endpoint-defs/{tool_id}", response_model=ToolOut, summary="An HTTP tool")
async def get_tool(tool_id: str, p: Caller, request: Request) -> ToolOut:
    async with runtime_of(request).db() as s:
        return _out(await _own_tool(s, p, tool_id))


@router.put("/tool-endpoint-defs/{tool_id}", response_model=ToolOut,
            summary="Replace an HTTP tool's whole definition (omitted fields take their defaults)")
async def replace_tool(tool_id: str, body: ToolIn, p: Caller, request: Request) -> ToolOut:
    _refs_checked(body)
    async with runtime_of(request).db() as s:
        tool = await _own_tool(s, p, tool_id, lock=True)
        if await name_taken(s, ToolDef, p.workspace_id, body.name, except_id=tool.id):
            raise _conflict(body.name)
        tool.name, tool.definition, tool.updated_at = body.name, body.model_dump(mode="json"), utcnow()
        await _save(s, body.name)
        return _out(tool)


@router.delete("/tool-endpoint-defs/{tool_id}", response_model=ToolDeleted,
               summary="Delete an HTTP tool; it is detached from every agent")
async def delete_tool(tool_id: str, p: Caller, request: Request) -> ToolDeleted:
    async with runtime_of(request).db() as s:
        tool = await _own_tool(s, p, tool_id, lock=True)
        # The FK cascades too; doing it here keeps the outcome independent of the backend's FK enforcement.
        await s.execute(delete(AgentTool).where(AgentTool.tool_id == tool.id))
        await s.execute(delete(ToolDef).where(ToolDef.id == tool.id))
        await s.commit()
    return ToolDeleted(id=tool_id, deleted=True)


# --- an agent's tools -----------------------------------------------------------------------------------------------

@router.get("/agents/{agent_id}/tools", response_model=DataList[AgentToolOut], summary="The tools attached to an agent")
async def agent_tools(agent_id: str, p: Caller, request: Request) -> DataList[AgentToolOut]:
    async with runtime_of(request).db() as s:
        if not ROW_ID.match(agent_id) or await s.scalar(
                select(Agent.id).where(Agent.id == agent_id, Agent.workspace_id == p.workspace_id)) is None:
            raise not_found("agent")
        return await _attached(s, agent_id)


@router.post("/agents/{agent_id}/tools", response_model=DataList[AgentToolOut],
             summary="Attach tools to an agent (an attached tool gets the new config); returns all its tools")
async def attach_tools(agent_id: str, body: AttachList, p: Caller, request: Request) -> DataList[AgentToolOut]:
    return await _change_tools(request, p, agent_id, body, replace=False)


@router.patch("/agents/{agent_id}/tools", response_model=DataList[AgentToolOut],
              summary="Set an agent's tools to exactly this list; returns them")
async def replace_tools(agent_id: str, body: AttachList, p: Caller, request: Request) -> DataList[AgentToolOut]:
    return await _change_tools(request, p, agent_id, body, replace=True)


@router.delete("/agents/{agent_id}/tools/{tool_id}", response_model=DataList[AgentToolOut],
               summary="Detach one tool from an agent; returns the tools left")
async def detach_tool(agent_id: str, tool_id: str, p: Caller, request: Request) -> DataList[AgentToolOut]:
    async with runtime_of(request).db() as s:
        agent = await _own_agent(s, p, agent_id)
        link = await s.get(AgentTool, (agent.id, tool_id)) if ROW_ID.match(tool_id) else None
        if link is None:
            raise not_found("tool attached to this agent")
        await s.delete(link)
        await s.commit()
        return await _attached(s, agent.id)
