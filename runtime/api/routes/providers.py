"""/api/v1/providers: the provider catalog (`config/providers.yaml`), the same one that validates agent configs, with
whether this server holds each cloud provider's key."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from config import catalog
from config.catalog import ProviderEntry
from config.settings import Settings
from runtime.api.auth import Caller
from runtime.api.errors import COMMON_ERRORS
from runtime.api.schemas import DataList
from runtime.context import runtime_of

router = APIRouter(prefix="/api/v1", tags=["providers"], responses=COMMON_ERRORS)

# Kupe's route names → catalog kinds; realtime models are LLMs to a Kupe client choosing a "model".
GROUPS: dict[str, tuple[str, ...]] = {"model": ("llm", "realtime"), "stt": ("stt",), "tts": ("tts",), "vad": ("vad",)}


class ProviderOut(BaseModel):
    id: str = Field(description="`<kind>:<provider_name>`")
    kind: str
    provider_name: str
    local: bool = Field(description="Runs in-process with bundled weights; needs no account")
    description: str
    models: list[str]
    voices: list[str]
    languages: list[str]
    default_model: str | None
    default_voice: str | None
    credentials_configured: bool = Field(description="Local, or this server has the provider's key")


class AllProviders(BaseModel):
    model: list[ProviderOut]
    stt: list[ProviderOut]
    tts: list[ProviderOut]
    vad: list[ProviderOut]


def _configured(entry: ProviderEntry, settings: Settings) -> bool:
    if entry.local:
        return True
    secret = getattr(settings, entry.key, None) if entry.key else None
    return secret is not None and bool(secret.get_secret_value())


def _rows(group: str, settings: Settings) -> list[ProviderOut]:
    return [
        ProviderOut(id=f"{kind}:{name}", kind=kind, provider_name=name, local=entry.local,
                    description=entry.description, models=entry.models, voices=entry.voices,
                    languages=entry.languages, default_model=entry.default_model, default_voice=entry.default_voice,
                    credentials_configured=_configured(entry, settings))
        for kind in GROUPS[group] for name, entry in catalog.catalog().get(kind, {}).items()
    ]


def _list(group: str, request: Request) -> DataList[ProviderOut]:
    return DataList[ProviderOut](data=_rows(group, runtime_of(request).settings))


@router.get("/providers/model", response_model=DataList[ProviderOut], summary="LLM and realtime providers")
async def model_providers(_p: Caller, request: Request) -> DataList[ProviderOut]:
    return _list("model", request)


@router.get("/providers/stt", response_model=DataList[ProviderOut], summary="Speech-to-text providers")
async def stt_providers(_p: Caller, request: Request) -> DataList[ProviderOut]:
    return _list("stt", request)


@router.get("/providers/tts", response_model=DataList[ProviderOut], summary="Text-to-speech providers")
async def tts_providers(_p: Caller, request: Request) -> DataList[ProviderOut]:
    return _list("tts", request)


@router.get("/providers/vad", response_model=DataList[ProviderOut], summary="Voice activity detection providers")
async def vad_providers(_p: Caller, request: Request) -> DataList[ProviderOut]:
    return _list("vad", request)


@router.get("/providers/all", response_model=AllProviders, summary="Every provider, by kind")
async def all_providers(_p: Caller, request: Request) -> AllProviders:
    settings = runtime_of(request).settings
    return AllProviders(**{group: _rows(group, settings) for group in GROUPS})
