"""/api/v1/agents: agents as their `AgentConfig`, plus the Kupe-compatible aliases (simple, summary, PUT).

Every write is validated by `AgentConfig`, the model the pipeline factory builds calls from, so the API cannot store a
config a call would refuse; a refusal names the field as the caller sent it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from loguru import logger
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, func, select, update

from config import catalog, provider_trust
from config.agent import FORBIDDEN_SECTIONS, REQUIRED_SECTIONS, AgentConfig, Architecture, explain
from pipelines.factory import local_models_needed
from pipelines.providers import local_models
from pipelines.providers.endpoint_guard import refusal
from pipelines.tools.netguard import refused_on_save
from runtime.api.auth import Caller
from runtime.api.errors import COMMON_ERRORS, ApiError
from runtime.api.lookup import commit_or_conflict, name_taken, owned
from config.text import NoNul
from runtime.api.schemas import Page, Pagination, UTCDatetime
from runtime.context import runtime_of
from runtime.store.models import Agent, Call, PhoneNumber, utcnow

router = APIRouter(prefix="/api/v1", tags=["agents"], responses=COMMON_ERRORS)

MAX_PAGE = 100_000  # as call-analytics: the offset must stay within the database's integers
NameSearch = Annotated[str | None, Query(max_length=120, description="Case-insensitive substring"), NoNul]

DEFAULT_PROMPT = "You are a helpful phone assistant."
# AgentConfig's architecture rule, so a Kupe PUT that switches architecture can fill in or drop sections.
_REQUIRED, _FORBIDDEN = REQUIRED_SECTIONS, FORBIDDEN_SECTIONS


class AgentSummary(BaseModel):
    id: str
    name: str
    architecture: Architecture
    created_at: UTCDatetime
    updated_at: UTCDatetime


class KupeAgent(BaseModel):
    id: str
    name: str
    first_response_message: str | None = Field(description="The welcome message (`welcome_message`)")
    description: str | None = None


class AgentDetail(AgentConfig):
    id: str
    created_at: UTCDatetime
    updated_at: UTCDatetime
    agent: KupeAgent = Field(description="The same agent in Kupe's shape, for Kupe clients")


class AgentDeleted(BaseModel):
    id: str
    deleted: bool


class SummaryPagination(BaseModel):
    page: int
    page_size: int
    total: int
    has_next: bool


class SummaryPage(BaseModel):
    data: list[AgentSummary]
    pagination: SummaryPagination


class SimpleCreate(BaseModel):
    name: str
    description: str | None = Field(default=None, description="Becomes the system prompt")


class _KupeIn(BaseModel):
    # Refusing unknown keys beats ignoring them: a client should not believe it changed something it did not.
    model_config = ConfigDict(extra="forbid")


class KupeAgentIn(_KupeIn):
    name: str | None = None
    system_prompt: str | None = None
    first_response_message: str | None = Field(
        default=None, validation_alias=AliasChoices("first_response_message", "welcome_message"),
        description="The welcome message; `welcome_message` is accepted too",
    )
    architecture: Architecture | None = None


class KupeModelIn(_KupeIn):
    model_name: str | None = None
    provider: str | None = None
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    base_url: str | None = None


class KupeTTSIn(_KupeIn):
    tts_model_name: str | None = None
    voice_name: str | None = None
    provider: str | None = None


class KupeTranscriberIn(_KupeIn):
    transcriber_model_name: str | None = None
    language: str | None = None
    provider: str | None = None


class KupeVADIn(_KupeIn):
    confidence: float | None = None
    start_secs: float | None = None
    stop_secs: float | None = None
    min_volume: float | None = None


class KupeUpdate(_KupeIn):
    agent: KupeAgentIn | None = None
    agent_model_config: KupeModelIn | None = None
    tts_config: KupeTTSIn | None = None
    transcriber_config: KupeTranscriberIn | None = None
    vad_config: KupeVADIn | None = None


def _inlined_schema(model: type[BaseModel], *, partial: bool = False) -> dict:
    """The model's JSON schema with its $defs inlined: an openapi_extra body cannot point into components."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return resolve({**defs[node["$ref"].rsplit("/", 1)[-1]], **rest})
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    schema = resolve(schema)
    if partial:
        schema.pop("required", None)
    return schema


def _json_body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# --- validation -----------------------------------------------------------------------------------------------------

_FIELD_FIRST = re.compile(r"^([\w.]+): (.*)$", re.S)


def _invalid(exc: ValidationError, renamed: dict[str, str] | None = None) -> ApiError:
    """A 400 naming each field; `renamed` maps config paths back to the names the caller used (Kupe's)."""
    details = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if not field and (m := _FIELD_FIRST.match(message)):  # the architecture/catalog check names its field itself
            field, message = m.groups()
        for config_path, theirs in sorted((renamed or {}).items(), key=lambda kv: -len(kv[0])):
            if field == config_path or field.startswith(config_path + "."):
                field = theirs + field[len(config_path):]
                break
        details.append({"field": field, "message": message})
    summary = explain(exc) if not renamed else "; ".join(
        f"{d['field']}: {d['message']}" if d["field"] else d["message"] for d in details
    )
    return ApiError(400, "validation_error", summary, details=details)


def _validate(data: dict, renamed: dict[str, str] | None = None) -> AgentConfig:
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, renamed) from None


def _refuse(field: str, message: str) -> ApiError:
    return ApiError(400, "validation_error", f"{field}: {message}", details=[{"field": field, "message": message}])


def _deep_merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --- queries --------------------------------------------------------------------------------------------------------

def _detail(agent: Agent) -> AgentDetail:
    cfg = AgentConfig.model_validate(agent.config)
    kupe = KupeAgent(id=agent.id, name=cfg.name, first_response_message=cfg.welcome_message)
    return AgentDetail(**cfg.model_dump(), id=agent.id, created_at=agent.created_at, updated_at=agent.updated_at,
                       agent=kupe)


def _summary(agent: Agent) -> AgentSummary:
    return AgentSummary.model_validate(agent, from_attributes=True)


async def _own_agent(s, p, agent_id: str, *, lock: bool = False) -> Agent:
    return await owned(s, Agent, agent_id, p, "agent", lock=lock)  # the lock keeps concurrent merges whole


def _conflict(name: str) -> ApiError:
    return ApiError(409, "conflict", f"an agent named {name!r} already exists in this workspace")


async def _commit(s, name: str) -> None:
    await commit_or_conflict(s, _conflict(name))


async def _preload(cfg: AgentConfig) -> None:
    """Start-up preloads only the agents it found; this keeps a new agent's first call from loading a model."""
    for name in sorted(local_models_needed(cfg)):
        try:
            await local_models.load(name)  # instant once loaded
        except Exception as exc:  # the agent is saved; its calls will report the model failure themselves
            logger.opt(exception=exc).error(f"local model {name!r} failed to load")


def _own_endpoints(cfg: AgentConfig) -> dict[str, str]:
    """The agent's own base URLs by field (only OpenAI's services take one)."""
    sections = {"llm.base_url": cfg.llm, "realtime.base_url": cfg.realtime}
    return {field: section.base_url for field, section in sections.items()
            if section is not None and getattr(section, "base_url", None)}


async def _check_endpoints(request: Request, cfg: AgentConfig, before: AgentConfig | None = None) -> None:
    """Refuse an agent's own base URL (a new or changed one) whose host resolves to a private, loopback or link-local
    address, unless the operator trusts it or allows private networks. A name that does not resolve now is
    accepted: every connection resolves and checks it again (pipelines/providers/endpoint_guard.py)."""
    settings = runtime_of(request).settings
    stored = _own_endpoints(before) if before is not None else {}
    for field, url in _own_endpoints(cfg).items():
        if stored.get(field) == url or not provider_trust.held_to_public_addresses(settings, "openai", url):
            continue
        target = provider_trust.parse(url)
        if target is None:
            continue  # not a plain URL: each connection still checks the host it dials
        if (exc := await refused_on_save(target.host, target.port)) is not None:
            raise _refuse(field, refusal(exc))


async def _create(request: Request, p, cfg: AgentConfig) -> AgentDetail:
    await _check_endpoints(request, cfg)
    async with runtime_of(request).db() as s:
        if await name_taken(s, Agent, p.workspace_id, cfg.name):
            raise _conflict(cfg.name)
        agent = Agent(workspace_id=p.workspace_id, name=cfg.name, architecture=cfg.architecture,
                      config=cfg.model_dump(mode="json"))
        s.add(agent)
        await _commit(s, cfg.name)
    await _preload(cfg)
    return _detail(agent)


async def _refuse_text_if_mapped(s, agent: Agent, field: str) -> None:
    """A text agent cannot take calls, so a mapped agent may not become one (as the mapping route refuses to map
    one): its numbers would answer every caller with a refusal. The mapping route locks the agent too."""
    numbers = list(await s.scalars(select(PhoneNumber.number).where(PhoneNumber.agent_id == agent.id)
                                   .order_by(PhoneNumber.number)))
    if numbers:
        raise _refuse(field, f"agent {agent.name!r} is mapped to a phone number ({', '.join(numbers)}); text agents "
                             "cannot take phone calls: unmap it first (DELETE /api/v1/phone/mapping/{id})")


async def _update(request: Request, p, agent_id: str, change, architecture_field: str) -> AgentDetail:
    """Apply `change(stored config dict) -> AgentConfig` to the agent, under a row lock."""
    async with runtime_of(request).db() as s:
        agent = await _own_agent(s, p, agent_id, lock=True)
        cfg = change(dict(agent.config))
        await _check_endpoints(request, cfg, AgentConfig.model_validate(agent.config))
        if cfg.architecture == "text" and agent.architecture != "text":
            await _refuse_text_if_mapped(s, agent, architecture_field)
        if cfg.name != agent.name and await name_taken(s, Agent, p.workspace_id, cfg.name, except_id=agent.id):
            raise _conflict(cfg.name)
        agent.name, agent.architecture = cfg.name, cfg.architecture
        agent.config = cfg.model_dump(mode="json")
        agent.updated_at = utcnow()
        await _commit(s, cfg.name)
    await _preload(cfg)
    return _detail(agent)


async def _list(request: Request, p, page: int, limit: int, architecture: str | None,
                name_search: str | None) -> tuple[list[AgentSummary], int]:
    q = select(Agent).where(Agent.workspace_id == p.workspace_id)
    if architecture:
        q = q.where(Agent.architecture == architecture)
    if name_search:
        q = q.where(func.lower(Agent.name).contains(name_search.lower(), autoescape=True))
    async with runtime_of(request).db() as s:
        total = await s.scalar(select(func.count()).select_from(q.subquery()))
        rows = await s.scalars(q.order_by(Agent.created_at, Agent.id).offset((page - 1) * limit).limit(limit))
        return [_summary(a) for a in rows], total or 0


# --- routes: the Kupe aliases come first, so `summary` and `simple` are not read as agent ids ------------------------

@router.post("/agents/simple", response_model=AgentDetail, status_code=201,
             summary="Create a pipeline agent with the platform defaults (Kupe)")
async def create_simple(body: SimpleCreate, p: Caller, request: Request) -> AgentDetail:
    cfg = _validate({
        "name": body.name, "architecture": "pipeline", "system_prompt": body.description or DEFAULT_PROMPT,
        "transcriber": {"provider": "whisper"}, "llm": {"provider": "scripted"}, "tts": {"provider": "piper"},
    })
    return await _create(request, p, cfg)


@router.get("/agents/summary", response_model=SummaryPage, summary="List agents, paged (Kupe)")
async def list_summary(
    p: Caller, request: Request,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
    name_search: NameSearch = None,
) -> SummaryPage:
    data, total = await _list(request, p, page, page_size, None, name_search)
    return SummaryPage(data=data, pagination=SummaryPagination(page=page, page_size=page_size, total=total,
                                                               has_next=page * page_size < total))


@router.get("/agents", response_model=Page[AgentSummary], summary="List the workspace's agents")
async def list_agents(
    p: Caller, request: Request,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    architecture: Architecture | None = None,
    name_search: NameSearch = None,
) -> Page[AgentSummary]:
    data, total = await _list(request, p, page, limit, architecture, name_search)
    return Page[AgentSummary](data=data, pagination=Pagination(page=page, limit=limit, total=total,
                                                               has_next=page * limit < total))


@router.post("/agents", response_model=AgentDetail, status_code=201, summary="Create an agent from its config",
             openapi_extra=_json_body(_inlined_schema(AgentConfig)))
async def create_agent(body: Annotated[dict[str, Any], Body()], p: Caller, request: Request) -> AgentDetail:
    return await _create(request, p, _validate(body))


@router.get("/agents/{agent_id}", response_model=AgentDetail, summary="An agent's config")
async def get_agent(agent_id: str, p: Caller, request: Request) -> AgentDetail:
    async with runtime_of(request).db() as s:
        return _detail(await _own_agent(s, p, agent_id))


@router.patch("/agents/{agent_id}", response_model=AgentDetail,
              summary="Change some fields; nested objects are merged into the stored config",
              openapi_extra=_json_body(_inlined_schema(AgentConfig, partial=True)))
async def patch_agent(agent_id: str, body: Annotated[dict[str, Any], Body()], p: Caller,
                      request: Request) -> AgentDetail:
    return await _update(request, p, agent_id, lambda stored: _validate(_deep_merge(stored, body)), "architecture")


@router.put("/agents/{agent_id}", response_model=AgentDetail, summary="Update an agent from Kupe's nested shape")
async def put_agent(agent_id: str, body: KupeUpdate, p: Caller, request: Request) -> AgentDetail:
    return await _update(request, p, agent_id, lambda stored: _apply_kupe(stored, body), "agent.architecture")


@router.delete("/agents/{agent_id}", response_model=AgentDeleted,
               summary="Delete an agent; its calls and transcripts stay, its numbers are unmapped")
async def delete_agent(agent_id: str, p: Caller, request: Request) -> AgentDeleted:
    async with runtime_of(request).db() as s:
        agent = await _own_agent(s, p, agent_id, lock=True)
        # The FKs say SET NULL too; doing it here keeps the outcome independent of the backend's FK enforcement.
        await s.execute(update(Call).where(Call.agent_id == agent.id).values(agent_id=None))
        await s.execute(update(PhoneNumber).where(PhoneNumber.agent_id == agent.id)
                        .values(agent_id=None, updated_at=utcnow()))
        await s.execute(delete(Agent).where(Agent.id == agent.id))
        await s.commit()
    return AgentDeleted(id=agent_id, deleted=True)


# --- Kupe's nested update → an AgentConfig partial update -----------------------------------------------------------

_AGENT_KEYS = {"name": "name", "system_prompt": "system_prompt", "first_response_message": "welcome_message",
               "architecture": "architecture"}
_KUPE_KEYS = {  # Kupe section → its key → the key in the config section
    "agent_model_config": {"model_name": "model", "provider": "provider", "temperature": "temperature",
                           "max_tokens": "max_tokens", "base_url": "base_url"},
    "tts_config": {"tts_model_name": "model", "voice_name": "voice", "provider": "provider"},
    "transcriber_config": {"transcriber_model_name": "model", "language": "language", "provider": "provider"},
    "vad_config": {k: k for k in ("confidence", "start_secs", "stop_secs", "min_volume")},
}


def _infer_provider(kind: str, model: str, current: str | None, base_url: str | None) -> str | None:
    """The provider serving `model`: the current one if it does, else the first catalog entry listing it."""
    entries = catalog.catalog().get(kind, {})
    entry = entries.get(current or "")
    if entry and (model in entry.models or (entry.any_model_with_base_url and base_url)):
        return current
    return next((name for name, e in entries.items() if model in e.models), None)


def _apply_kupe(stored: dict, body: KupeUpdate) -> AgentConfig:
    given = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v}  # null or {}: nothing to change
    merged, renamed = dict(stored), {}
    top = {_AGENT_KEYS[k]: (v, f"agent.{k}") for k, v in given.pop("agent", {}).items()}
    if "system_prompt" in given.get("agent_model_config", {}):
        top["system_prompt"] = (given["agent_model_config"].pop("system_prompt"), "agent_model_config.system_prompt")
    for ours, (value, theirs) in top.items():
        merged[ours], renamed[ours] = value, theirs

    architecture = merged.get("architecture") or "pipeline"
    model_section = "realtime" if architecture == "realtime" else "llm"  # a realtime agent's "model" is its own
    for unsupported in ("temperature", "max_tokens") if model_section == "realtime" else ():
        if unsupported in given.get("agent_model_config", {}):
            raise _refuse(f"agent_model_config.{unsupported}", "not supported by a realtime agent")
    targets = {"agent_model_config": (model_section, model_section), "tts_config": ("tts", "tts"),
               "transcriber_config": ("transcriber", "stt"), "vad_config": ("vad", None)}

    for kupe, fields in given.items():
        ours, kind = targets[kupe]
        current = dict(merged.get(ours) or {})
        change = {_KUPE_KEYS[kupe][k]: v for k, v in fields.items()}
        renamed.update({f"{ours}.{_KUPE_KEYS[kupe][k]}": f"{kupe}.{k}" for k in fields})
        if kind and change.get("model") and "provider" not in change:
            model_key = next(k for k, v in _KUPE_KEYS[kupe].items() if v == "model")
            found = _infer_provider(kind, change["model"], current.get("provider"),
                                    change.get("base_url", current.get("base_url")))
            if found is None:
                known = sorted({m for e in catalog.catalog().get(kind, {}).values() for m in e.models})
                raise _refuse(f"{kupe}.{model_key}", f"unknown model {change['model']!r}; known: {', '.join(known)}")
            change["provider"], renamed[f"{ours}.provider"] = found, f"{kupe}.{model_key}"
        if change.get("provider", current.get("provider")) != current.get("provider"):
            # The old provider's model and voice mean nothing to the new one: its defaults apply unless given.
            current = {k: v for k, v in current.items() if k not in ("model", "voice") or k in change}
        merged[ours] = {**current, **change}

    if architecture != stored.get("architecture"):
        # Kupe's PUT cannot remove a section, so switching architecture drops the ones the new one forbids (unless
        # sent in this request, which is then refused) and starts the ones it needs from the platform defaults.
        sent = {targets[kupe][0] for kupe in given}
        for section in _FORBIDDEN.get(architecture, ()):
            if section not in sent:
                merged[section] = None
        for section in _REQUIRED.get(architecture, ()):
            if merged.get(section) is None:
                merged[section] = {}
    return _validate(merged, renamed)
