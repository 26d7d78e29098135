"""Recording retention: recordings older than `recording_retention_days` are deleted by a job each server runs
(hourly; deleting twice is harmless), and their calls stop offering one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from loguru import logger
from sqlalchemy import update

from runtime.context import Runtime
from runtime.store.models import Call

EVERY_SECS = 3600.0


def _expired(directory: Path, days: int) -> list[Path]:
    if not directory.is_dir():
        return []
    cutoff = time.time() - days * 86400
    return [p for p in directory.glob("*.wav") if p.stat().st_mtime < cutoff]


async def delete_expired(rt: Runtime) -> int:
    days = rt.settings.recording_retention_days
    if days is None:
        return 0
    expired = await asyncio.to_thread(_expired, rt.settings.resolved_recordings_dir, days)
    if not expired:
        return 0
    # The calls stop offering them first: a crash in between leaves files that the next run deletes.
    async with rt.db() as s:
        await s.execute(update(Call).where(Call.recording_path.in_([p.name for p in expired]))
                        .values(recording_path=None))
        await s.commit()
    for path in expired:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    logger.info(f"deleted {len(expired)} recording(s) older than {days} days")
    return len(expired)


async def run(rt: Runtime, every: float = EVERY_SECS) -> None:
    while True:
        try:
            await delete_expired(rt)
        except Exception:
            logger.exception("recording retention job failed; trying again later")
        await asyncio.sleep(every)
