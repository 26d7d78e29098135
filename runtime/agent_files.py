"""Agent YAML files (`config/agents/*.yaml`): loaded at start-up into the store, created or updated by name."""

from __future__ import annotations

from pathlib import Path

import yaml
from loguru import logger
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import async_sessionmaker

from config.agent import AgentConfig, explain
from runtime.phone import to_e164
from runtime.store import repo

DEFAULT_WORKSPACE = "default"


class AgentFileError(ValueError):
    pass


def read_agent_file(path: Path) -> tuple[AgentConfig, str, list[str]]:
    """(config, workspace name, E.164 numbers) from one file; AgentFileError names the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise AgentFileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise AgentFileError(f"{path}: expected a mapping of agent fields")
    workspace = raw.pop("workspace", DEFAULT_WORKSPACE)
    numbers = raw.pop("phone_numbers", []) or []
    try:
        cfg = AgentConfig.model_validate(raw)
        e164 = [to_e164(str(n)) for n in numbers]
    except ValidationError as exc:
        raise AgentFileError(f"{path}: {explain(exc)}") from exc
    except ValueError as exc:
        raise AgentFileError(f"{path}: {exc}") from exc
    return cfg, str(workspace), e164


async def load_agent_files(db: async_sessionmaker, directory: Path) -> list[AgentConfig]:
    """Load every *.yaml in `directory`. A bad file is logged and skipped; the others still load."""
    loaded = []
    for path in sorted(directory.glob("*.y*ml")):
        try:
            cfg, workspace, numbers = read_agent_file(path)
        except AgentFileError as exc:
            logger.error(f"agent file skipped: {exc}")
            continue
        ws = await repo.ensure_workspace(db, workspace)
        agent = await repo.upsert_agent(db, ws.id, cfg)
        for number in numbers:
            await repo.map_number(db, number, agent)
        logger.info(f"agent {cfg.name!r} ({agent.id}) loaded from {path.name} into workspace {workspace!r}"
                    f"{', numbers ' + ', '.join(numbers) if numbers else ''}")
        loaded.append(cfg)
    return loaded
