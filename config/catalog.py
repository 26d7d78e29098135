"""The provider catalog (`providers.yaml`): which provider names, models and voices an agent config may use."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

import yaml
from pydantic import BaseModel

from config.settings import CONFIG_DIR

Kind = Literal["stt", "llm", "tts", "realtime"]


class ProviderEntry(BaseModel):
    local: bool
    description: str = ""
    key: str | None = None
    default_model: str | None = None
    models: list[str] = []
    languages: list[str] = []
    default_voice: str | None = None
    voices: list[str] = []
    voice_pattern: str | None = None
    any_model_with_base_url: bool = False

    def check_model(self, model: str, *, base_url: str | None = None) -> str | None:
        """None when the model is acceptable, else the reason."""
        if self.any_model_with_base_url and base_url:
            return None
        if self.models and model not in self.models:
            return f"unknown model {model!r}; known: {', '.join(self.models)}"
        return None

    def check_voice(self, voice: str) -> str | None:
        if voice in self.voices:
            return None
        if self.voice_pattern and re.fullmatch(self.voice_pattern, voice):
            return None
        return f"unknown voice {voice!r}; known: {', '.join(self.voices) or self.voice_pattern}"


@lru_cache
def catalog() -> dict[str, dict[str, ProviderEntry]]:
    raw = yaml.safe_load((CONFIG_DIR / "providers.yaml").read_text())
    return {kind: {name: ProviderEntry(**entry) for name, entry in entries.items()} for kind, entries in raw.items()}


def provider(kind: Kind, name: str) -> ProviderEntry | None:
    return catalog().get(kind, {}).get(name)


def provider_names(kind: Kind) -> list[str]:
    return list(catalog().get(kind, {}))
