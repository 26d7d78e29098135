"""/api/v1/agents (being written)."""

from __future__ import annotations

from fastapi import APIRouter

from runtime.api.errors import COMMON_ERRORS

router = APIRouter(prefix="/api/v1", tags=["agents"], responses=COMMON_ERRORS)
