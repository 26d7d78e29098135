"""/api/v1/post-analysis/rules and /api/v1/agents/{agent_id}/post-analysis: what is extracted from a call once it
ends (typed fields and a summary), and which agents' calls it is extracted from. See runtime/analysis."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from runtime.analysis.rules import RuleDefinition
from runtime.api.auth import Caller, Principal
from runtime.api.errors import COMMON_ERRORS, ApiError, bad_request
from runtime.api.lookup import commit_or_conflict, name_taken, owned
from runtime.api.schemas import DataList, UTCDatetime
from runtime.context import runtime_of
from runtime.store.models import Agent, AgentAnalysisRule, AnalysisRule, utcnow

router = APIRouter(prefix="/api/v1", tags=["post-analysis"], responses=COMMON_ERRORS)

RULES = "/post-analysis/rules"
MAX_ATTACHED = 64
_TICK = timedelta(microseconds=1)


class RuleIn(RuleDefinition):
    name: str = Field(min_length=1, max_length=120, description="Unique per workspace")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or "\x00" in value:
            raise ValueError("must not be blank or contain NUL characters")
        return value


class RuleOut(RuleDefinition):
    id: str
    name: str
    created_at: UTCDatetime
    updated_at: UTCDatetime


class RuleDeleted(BaseModel):
    id: str
    deleted: bool


class DuplicateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=120,
                             description='The copy\'s name; by default "NAME (copy)", numbered if taken')


class RuleIds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule_ids: list[str] = Field(max_length=MAX_ATTACHED)


def _out(rule: AnalysisRule) -> RuleOut:
    return RuleOut(**rule.definition, id=rule.id, name=rule.name, created_at=rule.created_at,
                   updated_at=rule.updated_at)


def _definition(body: RuleDefinition) -> dict:
    return RuleDefinition.model_validate(body.model_dump(exclude={"name"})).model_dump(mode="json")


def _conflict(name: str) -> ApiError:
    return ApiError(409, "conflict", f"name: an analysis rule named {name!r} already exists in this workspace")


async def _own_rule(s, p: Principal, rule_id: str, *, lock: bool = False) -> AnalysisRule:
    return await owned(s, AnalysisRule, rule_id, p, "analysis rule", lock=lock)


async def _save(s, name: str) -> None:
    await commit_or_conflict(s, _conflict(name))


async def _attached(s, agent_id: str) -> list[AnalysisRule]:
    return list(await s.scalars(
        select(AnalysisRule).join(AgentAnalysisRule, AgentAnalysisRule.rule_id == AnalysisRule.id)
        .where(AgentAnalysisRule.agent_id == agent_id).order_by(AgentAnalysisRule.created_at, AnalysisRule.name)))


# --- rules ----------------------------------------------------------------------------------------------------------

@router.get(RULES, response_model=DataList[RuleOut], summary="List the workspace's analysis rules")
async def list_rules(p: Caller, request: Request) -> DataList[RuleOut]:
    async with runtime_of(request).db() as s:
        rows = await s.scalars(select(AnalysisRule).where(AnalysisRule.workspace_id == p.workspace_id)
                               .order_by(AnalysisRule.name))
        return DataList[RuleOut](data=[_out(r) for r in rows])


@router.post(RULES, response_model=RuleOut, status_code=201, summary="Define an analysis rule")
async def create_rule(body: RuleIn, p: Caller, request: Request) -> RuleOut:
    async with runtime_of(request).db() as s:
        if await name_taken(s, AnalysisRule, p.workspace_id, body.name):
            raise _conflict(body.name)
        rule = AnalysisRule(workspace_id=p.workspace_id, name=body.name, definition=_definition(body))
        s.add(rule)
        await _save(s, body.name)
        return _out(rule)


@router.get(RULES + "/{rule_id}", response_model=RuleOut, summary="An analysis rule")
async def get_rule(rule_id: str, p: Caller, request: Request) -> RuleOut:
    async with runtime_of(request).db() as s:
        return _out(await _own_rule(s, p, rule_id))


@router.put(RULES + "/{rule_id}", response_model=RuleOut,
            summary="Replace an analysis rule's whole definition; calls analysed from now on use it")
async def replace_rule(rule_id: str, body: RuleIn, p: Caller, request: Request) -> RuleOut:
    async with runtime_of(request).db() as s:
        rule = await _own_rule(s, p, rule_id, lock=True)
        if await name_taken(s, AnalysisRule, p.workspace_id, body.name, except_id=rule.id):
            raise _conflict(body.name)
        rule.name, rule.definition, rule.updated_at = body.name, _definition(body), utcnow()
        await _save(s, body.name)
        return _out(rule)


@router.delete(RULES + "/{rule_id}", response_model=RuleDeleted,
               summary="Delete an analysis rule; it is detached from every agent (past results stay on their calls)")
async def delete_rule(rule_id: str, p: Caller, request: Request) -> RuleDeleted:
    async with runtime_of(request).db() as s:
        rule = await _own_rule(s, p, rule_id, lock=True)
        # The FK cascades too; doing it here keeps the outcome independent of the backend's FK enforcement.
        await s.execute(delete(AgentAnalysisRule).where(AgentAnalysisRule.rule_id == rule.id))
        await s.execute(delete(AnalysisRule).where(AnalysisRule.id == rule.id))
        await s.commit()
    return RuleDeleted(id=rule_id, deleted=True)


@router.post(RULES + "/{rule_id}/duplicate", response_model=RuleOut, status_code=201,
             summary="Copy an analysis rule under a new name (not attached to any agent)")
async def duplicate_rule(rule_id: str, p: Caller, request: Request,
                         body: Annotated[DuplicateIn | None, Body()] = None) -> RuleOut:
    async with runtime_of(request).db() as s:
        rule = await _own_rule(s, p, rule_id)
        if body is not None and body.name is not None:
            name = body.name
            if await name_taken(s, AnalysisRule, p.workspace_id, name):
                raise _conflict(name)
        else:
            base = f"{rule.name[:113]} (copy)"
            name, n = base, 1
            while await name_taken(s, AnalysisRule, p.workspace_id, name):
                n += 1
                name = f"{rule.name[:110]} (copy {n})"
        copy = AnalysisRule(workspace_id=p.workspace_id, name=name, definition=dict(rule.definition))
        s.add(copy)
        await _save(s, name)
        return _out(copy)


# --- an agent's rules -----------------------------------------------------------------------------------------------

@router.get("/agents/{agent_id}/post-analysis/attached-rules", response_model=DataList[RuleOut],
            summary="The analysis rules attached to an agent, in the order they were attached")
async def attached_rules(agent_id: str, p: Caller, request: Request) -> DataList[RuleOut]:
    async with runtime_of(request).db() as s:
        agent = await owned(s, Agent, agent_id, p, "agent")
        return DataList[RuleOut](data=[_out(r) for r in await _attached(s, agent.id)])


@router.get("/agents/{agent_id}/post-analysis/attached-rule-ids", response_model=RuleIds,
            summary="The ids of the analysis rules attached to an agent")
async def attached_rule_ids(agent_id: str, p: Caller, request: Request) -> RuleIds:
    async with runtime_of(request).db() as s:
        agent = await owned(s, Agent, agent_id, p, "agent")
        return RuleIds(rule_ids=[r.id for r in await _attached(s, agent.id)])


@router.put("/agents/{agent_id}/post-analysis/attached-rules", response_model=DataList[RuleOut],
            summary="Set an agent's analysis rules to exactly these (an empty list detaches all); returns them")
async def set_attached_rules(agent_id: str, body: RuleIds, p: Caller, request: Request) -> DataList[RuleOut]:
    async with runtime_of(request).db() as s:
        # The lock serialises changes to one agent's rules on PostgreSQL; SQLite has a single writer anyway.
        agent = await owned(s, Agent, agent_id, p, "agent", lock=True)
        seen: set[str] = set()
        for i, rule_id in enumerate(body.rule_ids):
            if rule_id in seen:
                raise bad_request(f"rule_ids.{i}: listed twice", [{"field": f"rule_ids.{i}", "message": "listed twice"}])
            seen.add(rule_id)
            await _own_rule(s, p, rule_id)
        links = {link.rule_id: link for link in await s.scalars(
            select(AgentAnalysisRule).where(AgentAnalysisRule.agent_id == agent.id))}
        for rule_id, link in links.items():
            if rule_id not in seen:
                await s.delete(link)
        now = utcnow()
        # Rules already attached keep their place; new ones follow, in the order given.
        new = [r for r in body.rule_ids if r not in links]
        s.add_all(AgentAnalysisRule(agent_id=agent.id, rule_id=r, created_at=now + (i * _TICK))
                  for i, r in enumerate(new))
        try:
            await s.commit()
        except IntegrityError:  # a rule deleted (or attached) by a concurrent request
            await s.rollback()
            raise ApiError(409, "conflict", "the agent's analysis rules changed concurrently; retry") from None
        return DataList[RuleOut](data=[_out(r) for r in await _attached(s, agent.id)])
