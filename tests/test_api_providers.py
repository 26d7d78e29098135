"""Providers: /api/v1/providers/model|stt|tts|vad|all, the catalog of config/providers.yaml."""

from __future__ import annotations

import os

from config import catalog
from tests.conftest import start_api_server, stop_server

ROW_KEYS = {"id", "kind", "provider_name", "local", "description", "models", "voices", "languages", "default_model",
            "default_voice", "credentials_configured"}


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {row["id"]: row for row in rows}


def test_each_kind_lists_its_catalog_rows(api):
    expected = {"model": {"llm:scripted", "llm:openai", "realtime:openai"}, "stt": {"stt:whisper", "stt:deepgram"},
                "tts": {"tts:piper", "tts:cartesia"}, "vad": {"vad:silero"}}
    with api.client("developer") as c:
        for group, ids in expected.items():
            r = c.get(f"/api/v1/providers/{group}")
            assert r.status_code == 200, r.text
            rows = r.json()["data"]
            assert set(by_id(rows)) == ids
            assert all(set(row) == ROW_KEYS and row["id"] == f"{row['kind']}:{row['provider_name']}" for row in rows)
        everything = c.get("/api/v1/providers/all")
    assert everything.status_code == 200
    assert {group: set(by_id(rows)) for group, rows in everything.json().items()} == expected


def test_rows_carry_the_catalogs_models_voices_and_defaults(api):
    with api.client("admin") as c:
        stt = by_id(c.get("/api/v1/providers/stt").json()["data"])
        tts = by_id(c.get("/api/v1/providers/tts").json()["data"])
        model = by_id(c.get("/api/v1/providers/model").json()["data"])
    deepgram = catalog.provider("stt", "deepgram")
    assert stt["stt:deepgram"]["models"] == deepgram.models and stt["stt:deepgram"]["default_model"] == "nova-3"
    assert stt["stt:deepgram"]["languages"] == deepgram.languages and stt["stt:deepgram"]["local"] is False
    assert tts["tts:piper"]["voices"] == ["en_US-joe-medium"] and tts["tts:piper"]["default_voice"] == "en_US-joe-medium"
    assert "gpt-4o-mini" in model["llm:openai"]["models"] and model["realtime:openai"]["kind"] == "realtime"
    assert model["realtime:openai"]["default_voice"] == "alloy"


def test_credentials_configured_is_true_for_local_and_false_for_missing_keys(api):
    with api.client("admin") as c:
        everything = c.get("/api/v1/providers/all").json()
    rows = by_id([row for rows in everything.values() for row in rows])
    for local in ("stt:whisper", "llm:scripted", "tts:piper", "vad:silero"):
        assert rows[local]["local"] is True and rows[local]["credentials_configured"] is True, rows[local]
    # The servers inherit the shell's provider keys (server_env keeps them); a test shell normally has none.
    for cloud, var in (("stt:deepgram", "DEEPGRAM_API_KEY"), ("tts:cartesia", "CARTESIA_API_KEY"),
                       ("llm:openai", "OPENAI_API_KEY"), ("realtime:openai", "OPENAI_API_KEY")):
        assert rows[cloud]["local"] is False, rows[cloud]
        assert rows[cloud]["credentials_configured"] is bool(os.environ.get(var)), rows[cloud]


def test_credentials_configured_follows_the_servers_settings(tmp_path):
    """Settings-only, so one backend is enough: a server given a Deepgram key (and an empty OpenAI one)."""
    api = start_api_server(tmp_path, "sqlite", {"DEEPGRAM_API_KEY": "dg-test-key", "OPENAI_API_KEY": ""})
    try:
        with api.client("admin") as c:
            rows = by_id([row for rows in c.get("/api/v1/providers/all").json().values() for row in rows])
    finally:
        stop_server(api.server)
    assert rows["stt:deepgram"]["credentials_configured"] is True
    assert rows["llm:openai"]["credentials_configured"] is False and rows["realtime:openai"]["credentials_configured"] is False
    assert "dg-test-key" not in str(rows)


def test_providers_need_a_key(api):
    with api.client(None) as c:
        for group in ("model", "stt", "tts", "vad", "all"):
            r = c.get(f"/api/v1/providers/{group}")
            assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        assert c.get("/api/v1/providers/all", headers={"x-api-key": "vxl_wrong"}).status_code == 401
