"""Shapes shared by the API routers."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel

T = TypeVar("T")

# SQLite hands datetimes back without their zone; every stored time is UTC, so say so on the way out.
UTCDatetime = Annotated[datetime, AfterValidator(lambda d: d if d.tzinfo else d.replace(tzinfo=timezone.utc))]


class Pagination(BaseModel):
    page: int
    limit: int
    total: int
    has_next: bool


class Page(BaseModel, Generic[T]):
    data: list[T]
    pagination: Pagination


class DataList(BaseModel, Generic[T]):
    data: list[T]
