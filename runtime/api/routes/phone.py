"""/api/v1/phone (being written)."""

from __future__ import annotations

from fastapi import APIRouter

from runtime.api.errors import COMMON_ERRORS

router = APIRouter(prefix="/api/v1", tags=["phone"], responses=COMMON_ERRORS)
