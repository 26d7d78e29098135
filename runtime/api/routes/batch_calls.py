"""/api/v1/batch-call: outbound campaigns (Kupe's batch calling). A batch is created with its agent, caller line,
variable names and concurrency; recipients are added as JSON, CSV or upserts; once started it can no longer be
edited, and the engine (`runtime/batch/`) dials it. Every response is wrapped in `{"data": ...}`, as Kupe's is.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, func, select

from config.agent import AgentConfig
from config.variables import placeholders
from runtime.api.auth import Caller, Principal
from runtime.api.errors import COMMON_ERRORS, ApiError, bad_request
from runtime.api.lookup import ROW_ID, owned
from runtime.api.schemas import DataList, UTCDatetime
from runtime.batch import rows as R
from runtime.batch.outcomes import ITEM_STATUSES
from runtime.context import runtime_of
from runtime.store.models import Agent, BatchCall, BatchItem, PhoneNumber, new_id, utcnow

router = APIRouter(prefix="/api/v1/batch-call", tags=["batch calls"], responses=COMMON_ERRORS)

T = TypeVar("T")
BatchStatus = Literal["not_started", "in_progress", "completed"]
ItemStatus = Literal["not_started", "calling", "completed", "failed", "no_answer"]
MAX_BATCH_SIZE = 100


# --- shapes ---------------------------------------------------------------------------------------------------------

class Data(BaseModel, Generic[T]):
    data: T


class _In(BaseModel):
    # Refusing unknown keys beats ignoring them: a client should not believe it changed something it did not.
    model_config = ConfigDict(extra="forbid")

    @field_validator("variable_names", check_fields=False)
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return R.check_variable_names(value)

    @field_validator("batch_name", check_fields=False)
    @classmethod
    def _storable(cls, value: str) -> str:
        if why := R.unstorable(value):
            raise ValueError(why)
        return value


class BatchCreate(_In):
    agent_id: str = Field(max_length=64, description="The agent that speaks on every call (not a text agent)")
    caller_phone_id: str = Field(max_length=64, description="The number calls come from (its id in /api/v1/phone)")
    batch_name: str = Field(min_length=1, max_length=200)
    variable_names: list[str] = Field(
        default_factory=list, max_length=50,
        description="The {{name}}s of the agent's prompt each recipient supplies (a column each)")
    batch_size: int = Field(default=1, ge=1, le=MAX_BATCH_SIZE, description="Calls in progress at once, at most")


class VariablesIn(_In):
    variable_names: list[str] = Field(max_length=50)


Record = dict[str, Any]


class RecordsIn(_In):
    records: list[Record] = Field(
        max_length=R.MAX_ROWS, description="Each: `to_phonenumber` and one key per variable name",
        examples=[[{"to_phonenumber": "+15550104242", "name": "Ada"}]])


class UpsertIn(_In):
    items: list[Record] = Field(
        max_length=R.MAX_ROWS,
        description="Each: a new recipient, or with `id` the changes to an existing one (the rest is kept)")


class BatchOut(BaseModel):
    id: str
    agent_id: str | None = Field(description="null once the agent is deleted")
    caller_phone_id: str | None = Field(description="null once the number is deleted")
    batch_name: str
    variable_names: list[str]
    batch_size: int
    status: BatchStatus
    created_at: UTCDatetime
    started_at: UTCDatetime | None
    completed_at: UTCDatetime | None
    updated_at: UTCDatetime


class StatusCounts(BaseModel):
    not_started: int = 0
    calling: int = 0
    completed: int = 0
    failed: int = 0
    no_answer: int = 0


class BatchStatusOut(BatchOut):
    status_counts: StatusCounts
    total: int


class ItemOut(BaseModel):
    id: str
    batch_id: str
    to_phonenumber: str = Field(description="E.164")
    variables: dict[str, str]
    status: ItemStatus = Field(description="completed: answered and talked; no_answer: no answer, busy or "
                                           "voicemail; failed: see error_message")
    call_id: str | None = Field(description="The call placed for this recipient")
    error_message: str | None
    attempts: int
    created_at: UTCDatetime
    updated_at: UTCDatetime


class Rejected(BaseModel):
    line: int | None = Field(default=None, description="CSV: the row's line in the file (the header is line 1)")
    index: int | None = Field(default=None, description="JSON: the row's position in `records` / `items`, from 0")
    field: str | None = Field(description="The column at fault; null when the row's shape is")
    message: str


class UploadOut(BaseModel):
    added: int
    updated: int
    rejected: list[Rejected] = Field(description="Rows not stored, and why; the others were")
    items: list[ItemOut] = Field(description="The rows this request stored")
    total: int = Field(description="Recipients in the batch now")


class Deleted(BaseModel):
    id: str
    deleted: bool


# --- queries --------------------------------------------------------------------------------------------------------

def _batch(row: BatchCall) -> BatchOut:
    return BatchOut(id=row.id, agent_id=row.agent_id, caller_phone_id=row.caller_phone_id, batch_name=row.name,
                    variable_names=list(row.variable_names or []), batch_size=row.batch_size, status=row.status,
                    created_at=row.created_at, started_at=row.started_at, completed_at=row.completed_at,
                    updated_at=row.updated_at)


def _item(row: BatchItem) -> ItemOut:
    return ItemOut(id=row.id, batch_id=row.batch_id, to_phonenumber=row.to_number, variables=dict(row.variables or {}),
                   status=row.status, call_id=row.call_id, error_message=row.error_message, attempts=row.attempts,
                   created_at=row.created_at, updated_at=row.updated_at)


async def _own_batch(s, p: Principal, batch_id: str, *, lock: bool = False) -> BatchCall:
    return await owned(s, BatchCall, batch_id, p, "batch", lock=lock)


async def _editable_batch(s, p: Principal, batch_id: str) -> BatchCall:
    """The batch, locked, while it can still change: a started batch's rows are the engine's."""
    batch = await _own_batch(s, p, batch_id, lock=True)
    if batch.status != "not_started":
        raise ApiError(409, "batch_started", f"batch {batch.id} has started ({batch.status}); its recipients and "
                                             "variables can no longer be changed")
    return batch


def _refuse(field: str, message: str) -> ApiError:
    return bad_request(f"{field}: {message}", [{"field": field, "message": message}])


async def _dialable_agent(s, p: Principal, agent_id: str | None) -> Agent:
    if agent_id is None:
        raise _refuse("agent_id", "the batch's agent was deleted")
    agent = await owned(s, Agent, agent_id, p, "agent")
    if agent.architecture == "text":
        raise _refuse("agent_id", f"agent {agent.name!r} is a text agent; text agents cannot take phone calls")
    return agent


async def _items(s, batch_id: str, status: str | None = None) -> list[BatchItem]:
    q = select(BatchItem).where(BatchItem.batch_id == batch_id)
    if status:
        q = q.where(BatchItem.status == status)
    return list(await s.scalars(q.order_by(BatchItem.created_at, BatchItem.id)))


def _field_name(key: Any) -> str:
    """A client's key as it can be echoed back in JSON (no lone surrogates, not the whole of a huge key)."""
    return str(key)[:64].encode("utf-8", "backslashreplace").decode()


Checked = tuple[dict, R.Row | R.RowError, BatchItem | None]  # (where in the request, the row, the row it updates)


async def _store(s, batch: BatchCall, checked: list[Checked]) -> UploadOut:
    """Store the good rows, refusing a number already in the batch; the bad ones are reported."""
    numbers = {item.to_number: item.id for item in await _items(s, batch.id)}
    rejected, stored, added, updated = [], [], 0, 0
    for where, row, target in checked:
        if isinstance(row, R.RowError):
            rejected.append(Rejected(**where, field=row.field and _field_name(row.field), message=row.message))
            continue
        holder = numbers.get(row.to_number)
        if holder is not None and (target is None or holder != target.id):
            rejected.append(Rejected(**where, field=R.TO, message=f"{row.to_number} is already in this batch"))
            continue
        if target is None:
            item = BatchItem(id=new_id(), batch_id=batch.id, to_number=row.to_number, variables=row.variables,
                             status="not_started", attempts=0)
            s.add(item)
            added += 1
        else:
            numbers.pop(target.to_number, None)
            item, item.to_number, item.variables, item.updated_at = target, row.to_number, row.variables, utcnow()
            updated += 1
        numbers[row.to_number] = item.id
        stored.append(item)
    if stored:
        batch.updated_at = utcnow()
    await s.commit()
    return UploadOut(added=added, updated=updated, rejected=rejected, items=[_item(i) for i in stored],
                     total=len(numbers))


def _check(raw: dict[str, Any], variable_names: list[str]) -> R.Row | R.RowError:
    try:
        return R.check_row(raw, variable_names)
    except R.RowError as exc:
        return exc


# --- routes: the fixed paths come first, so `me` and `create` are never read as batch ids ---------------------------

@router.post("/create", response_model=Data[BatchOut], status_code=201, summary="Create a batch (no recipients yet)")
async def create_batch(body: BatchCreate, p: Caller, request: Request) -> Data[BatchOut]:
    async with runtime_of(request).db() as s:
        agent = await _dialable_agent(s, p, body.agent_id)
        line = await owned(s, PhoneNumber, body.caller_phone_id, p, "phone number")
        batch = BatchCall(id=new_id(), workspace_id=p.workspace_id, agent_id=agent.id, caller_phone_id=line.id,
                          name=body.batch_name, variable_names=body.variable_names, batch_size=body.batch_size,
                          status="not_started")
        s.add(batch)
        await s.commit()
        return Data[BatchOut](data=_batch(batch))


@router.get("/me", response_model=DataList[BatchOut], summary="The workspace's batches, newest first")
async def list_batches(p: Caller, request: Request) -> DataList[BatchOut]:
    async with runtime_of(request).db() as s:
        rows = await s.scalars(select(BatchCall).where(BatchCall.workspace_id == p.workspace_id)
                               .order_by(BatchCall.created_at.desc(), BatchCall.id))
        return DataList[BatchOut](data=[_batch(b) for b in rows])


@router.post("/upload-json/{batch_id}", response_model=Data[UploadOut],
             summary="Add recipients as JSON records; bad rows are reported, good ones kept")
async def upload_json(batch_id: str, body: RecordsIn, p: Caller, request: Request) -> Data[UploadOut]:
    async with runtime_of(request).db() as s:
        batch = await _editable_batch(s, p, batch_id)
        names = list(batch.variable_names or [])
        checked = [({"index": i}, _check(raw, names), None) for i, raw in enumerate(body.records)]
        return Data[UploadOut](data=await _store(s, batch, checked))


@router.post("/upload/{batch_id}", response_model=Data[UploadOut],
             summary="Add recipients from a CSV file (`to_phonenumber` plus one column per variable)")
async def upload_csv(batch_id: str, p: Caller, request: Request,
                     file: UploadFile = File(description="UTF-8 CSV; the first line is the header")) -> Data[UploadOut]:
    data = await file.read()
    async with runtime_of(request).db() as s:
        batch = await _editable_batch(s, p, batch_id)
        try:
            parsed = R.parse_csv(data, list(batch.variable_names or []))
        except R.FileError as exc:
            raise _refuse("file", str(exc)) from None
        return Data[UploadOut](data=await _store(s, batch, [({"line": line}, row, None) for line, row in parsed]))


@router.post("/start/{batch_id}", response_model=Data[BatchOut], summary="Launch the campaign")
async def start_batch(batch_id: str, p: Caller, request: Request) -> Data[BatchOut]:
    async with runtime_of(request).db() as s:
        batch = await _editable_batch(s, p, batch_id)
        agent = await _dialable_agent(s, p, batch.agent_id)
        if batch.caller_phone_id is None:
            raise _refuse("caller_phone_id", "the batch's caller phone number was deleted")
        items = await _items(s, batch.id)
        if not items:
            raise ApiError(400, "empty_batch", f"batch {batch.id} has no recipients; add some before starting it")
        names = list(batch.variable_names or [])
        # Every call would be refused by the dialer: say so now, once, rather than fail every row.
        if unnamed := sorted(placeholders(AgentConfig.model_validate(agent.config)) - set(names)):
            used = ", ".join("{{" + n + "}}" for n in unnamed)
            message = f"agent {agent.name!r} uses {used}, which the batch's variable_names do not include"
            raise ApiError(400, "missing_variables", f"variable_names: {message}",
                           [{"field": "variable_names", "message": message}])
        lacking = [(i, n) for i in items for n in names if not (i.variables or {}).get(n)]
        if lacking:
            details = [{"field": name, "message": f"recipient {item.id} ({item.to_number}) has no {name!r}"}
                       for item, name in lacking[:20]]
            raise ApiError(400, "missing_variables", f"{len(lacking)} recipient value(s) missing for the batch's "
                                                     "variable_names; upsert them first", details)
        batch.status, batch.started_at = "in_progress", utcnow()
        batch.updated_at = batch.started_at
        await s.commit()
        return Data[BatchOut](data=_batch(batch))


# --- one batch ------------------------------------------------------------------------------------------------------

@router.get("/{batch_id}", response_model=Data[BatchOut], summary="A batch (metadata only)")
async def get_batch(batch_id: str, p: Caller, request: Request) -> Data[BatchOut]:
    async with runtime_of(request).db() as s:
        return Data[BatchOut](data=_batch(await _own_batch(s, p, batch_id)))


@router.get("/{batch_id}/status", response_model=Data[BatchStatusOut],
            summary="A batch with how many recipients are in each state")
async def batch_status(batch_id: str, p: Caller, request: Request) -> Data[BatchStatusOut]:
    async with runtime_of(request).db() as s:
        batch = await _own_batch(s, p, batch_id)
        counts = dict((await s.execute(select(BatchItem.status, func.count()).where(BatchItem.batch_id == batch.id)
                                       .group_by(BatchItem.status))).all())
        out = BatchStatusOut(**_batch(batch).model_dump(), total=sum(counts.values()),
                             status_counts=StatusCounts(**{k: v for k, v in counts.items() if k in ITEM_STATUSES}))
        return Data[BatchStatusOut](data=out)


@router.get("/{batch_id}/data", response_model=DataList[ItemOut], summary="The batch's recipients and their outcome")
async def batch_items(batch_id: str, p: Caller, request: Request,
                      status: ItemStatus | None = Query(default=None, description="Only recipients in this state")
                      ) -> DataList[ItemOut]:
    async with runtime_of(request).db() as s:
        batch = await _own_batch(s, p, batch_id)
        return DataList[ItemOut](data=[_item(i) for i in await _items(s, batch.id, status)])


@router.post("/{batch_id}/data/upsert", response_model=Data[UploadOut],
             summary="Add recipients, or change them by `id` (before launch)")
async def upsert_items(batch_id: str, body: UpsertIn, p: Caller, request: Request) -> Data[UploadOut]:
    async with runtime_of(request).db() as s:
        batch = await _editable_batch(s, p, batch_id)
        names = list(batch.variable_names or [])
        existing = {i.id: i for i in await _items(s, batch.id)}
        checked: list[Checked] = []
        for index, raw in enumerate(body.items):
            where = {"index": index}
            if "id" in raw:
                target = existing.get(raw["id"]) if isinstance(raw["id"], str) else None
                if target is None:
                    checked.append((where, R.RowError("id", "no such recipient in this batch"), None))
                    continue
                # Only the batch's current variables are kept: after variable_names changed, the old ones would
                # be refused as unknown columns, and the row could never be fixed.
                kept = {k: v for k, v in (target.variables or {}).items() if k in names}
                merged = {R.TO: target.to_number, **kept, **{k: v for k, v in raw.items() if k != "id"}}
                checked.append((where, _check(merged, names), target))
            else:
                checked.append((where, _check(raw, names), None))
        return Data[UploadOut](data=await _store(s, batch, checked))


@router.patch("/{batch_id}/variables", response_model=Data[BatchOut],
              summary="Replace the batch's variable names (before launch)")
async def set_variables(batch_id: str, body: VariablesIn, p: Caller, request: Request) -> Data[BatchOut]:
    async with runtime_of(request).db() as s:
        batch = await _editable_batch(s, p, batch_id)
        batch.variable_names, batch.updated_at = body.variable_names, utcnow()
        await s.commit()
        return Data[BatchOut](data=_batch(batch))


@router.delete("/{batch_id}/data/{item_id}", response_model=Data[Deleted],
               summary="Remove one recipient (before launch)")
async def delete_item(batch_id: str, item_id: str, p: Caller, request: Request) -> Data[Deleted]:
    async with runtime_of(request).db() as s:
        batch = await _editable_batch(s, p, batch_id)
        item = await s.scalar(select(BatchItem).where(BatchItem.id == item_id, BatchItem.batch_id == batch.id)) \
            if ROW_ID.match(item_id) else None
        if item is None:
            raise ApiError(404, "not_found", "recipient not found")
        await s.delete(item)
        batch.updated_at = utcnow()
        await s.commit()
    return Data[Deleted](data=Deleted(id=item_id, deleted=True))


@router.delete("/{batch_id}", response_model=Data[Deleted],
               summary="Delete a batch and its recipients; a running batch dials no one else (calls in progress go on)")
async def delete_batch(batch_id: str, p: Caller, request: Request) -> Data[Deleted]:
    async with runtime_of(request).db() as s:
        batch = await _own_batch(s, p, batch_id, lock=True)
        # The FK cascades too; deleting here keeps the outcome independent of the backend's FK enforcement.
        await s.execute(delete(BatchItem).where(BatchItem.batch_id == batch.id))
        await s.execute(delete(BatchCall).where(BatchCall.id == batch.id))
        await s.commit()
    return Data[Deleted](data=Deleted(id=batch_id, deleted=True))
