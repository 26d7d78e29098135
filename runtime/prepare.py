"""What a server does once at start-up, before any call: the schema, the agent files, expired idempotency keys.
`voxline serve --workers N` does it once in the parent (which imports nothing of the pipeline for it)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from config.settings import Settings
from runtime.agent_files import load_agent_files
from runtime.api import guards
from runtime.store import db as store_db


async def prepare_store(engine: AsyncEngine, settings: Settings) -> None:
    await store_db.migrate(engine)
    db = store_db.sessionmaker(engine)
    await load_agent_files(db, settings.agents_dir)
    await guards.purge_expired_idempotency(db, timedelta(hours=settings.idempotency_ttl_hours))


async def prepare_once(settings: Settings) -> None:
    """prepare_store on an engine of its own, and the token key made if it is to be: before any worker starts, so
    that they all read the same one."""
    settings.resolved_secret_key()
    engine = store_db.create_engine(settings.resolved_database_url)
    try:
        await prepare_store(engine, settings)
    finally:
        await engine.dispose()
