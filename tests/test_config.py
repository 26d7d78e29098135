"""The agent config model, the provider catalog and registry, tokens, phone numbers and the scripted LLM."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from config import catalog
from config.agent import AgentConfig, ScriptConfig
from pipelines.providers import registry
from pipelines.providers.scripted import Script, last_user_text
from runtime.agent_files import AgentFileError, read_agent_file
from runtime.phone import InvalidPhoneNumber, to_e164
from runtime.tokens import StreamTokens, TokenError
from tests.conftest import ROOT

PIPELINE = dict(name="a", system_prompt="p", transcriber={}, llm={}, tts={})


def refused(**fields) -> str:
    with pytest.raises(ValidationError) as exc:
        AgentConfig(**fields)
    return str(exc.value)


def test_pipeline_defaults_are_the_local_providers():
    cfg = AgentConfig(**PIPELINE)
    assert (cfg.transcriber.provider, cfg.llm.provider, cfg.tts.provider) == ("whisper", "scripted", "piper")
    assert cfg.vad.confidence == 0.7 and cfg.vad.start_secs == 0.1 and cfg.vad.min_volume == 0.3
    assert cfg.interruption.enabled and cfg.turn.silence_secs == 0.7


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(name="a", system_prompt="p", llm={}, tts={}), "transcriber: required for a 'pipeline' agent"),
        (dict(name="a", architecture="realtime", system_prompt="p"), "realtime: required for a 'realtime' agent"),
        (dict(name="a", architecture="text", system_prompt="p", llm={}, tts={}), "tts: not allowed for a 'text' agent"),
        ({**PIPELINE, "transcriber": {"provider": "nosuch"}}, "transcriber.provider: unknown provider 'nosuch'"),
        ({**PIPELINE, "tts": {"provider": "piper", "voice": "en_GB-nobody"}}, "tts.voice: unknown voice"),
        ({**PIPELINE, "llm": {"provider": "openai", "model": "gpt-nonexistent"}}, "llm.model: unknown model"),
        ({**PIPELINE, "transcriber": {"provider": "whisper", "language": "fr"}}, "transcriber.language"),
        ({**PIPELINE, "vad": {"confidence": 1.5}}, "vad.confidence"),
        ({**PIPELINE, "llm": {"temperature": 3}}, "llm.temperature"),
        ({**PIPELINE, "colour": "blue"}, "colour"),
        ({**PIPELINE, "system_prompt": ""}, "system_prompt"),
    ],
)
def test_invalid_configs_are_refused_naming_the_field(fields, message):
    assert message in refused(**fields)


def test_openai_compatible_servers_accept_any_model():
    cfg = AgentConfig(**{**PIPELINE, "llm": {"provider": "openai", "model": "llama-3.1-8b", "base_url": "http://x/v1"}})
    assert cfg.llm.model == "llama-3.1-8b"


def test_cartesia_voice_ids_are_uuids():
    AgentConfig(**{**PIPELINE, "tts": {"provider": "cartesia", "voice": "79a125e8-cd45-4c13-8a67-188112f4dd22"}})
    assert "tts.voice" in refused(**{**PIPELINE, "tts": {"provider": "cartesia", "voice": "joe"}})


def test_catalog_and_registry_name_the_same_providers():
    # VAD is not a registry provider: Silero is built by the pipeline architecture itself.
    in_catalog = {(kind, name) for kind, entries in catalog.catalog().items() for name in entries if kind != "vad"}
    assert in_catalog == registry.registered()


def test_missing_cloud_key_names_the_variable():
    from config.settings import Settings

    cfg = AgentConfig(**{**PIPELINE, "tts": {"provider": "cartesia"}})
    ctx = registry.BuildContext(agent=cfg, settings=Settings(_env_file=None))
    with pytest.raises(registry.ProviderError, match="CARTESIA_API_KEY is not set") as exc:
        registry.build("tts", cfg.tts, ctx)
    assert exc.value.kind == "tts"


def test_demo_agent_file_is_valid_and_mapped():
    cfg, workspace, numbers = read_agent_file(ROOT / "config" / "agents" / "demo.yaml")
    assert cfg.name == "demo" and workspace == "default" and numbers == ["+15550100000"]
    assert (cfg.transcriber.provider, cfg.llm.provider, cfg.tts.provider) == ("whisper", "scripted", "piper")


def test_bad_agent_file_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsystem_prompt: p\ntranscriber: {}\nllm: {}\ntts: {provider: piper, voice: nope}\n")
    with pytest.raises(AgentFileError, match=r"bad.yaml.*tts.voice"):
        read_agent_file(bad)
    bad.write_text("name: x\nphone_numbers: ['555']\nsystem_prompt: p\ntranscriber: {}\nllm: {}\ntts: {}\n")
    with pytest.raises(AgentFileError, match="not a phone number"):
        read_agent_file(bad)


def test_phone_numbers_are_normalised_to_e164():
    assert to_e164("+1 (555) 010-0000") == "+15550100000"
    assert to_e164("+44 20 7183 8750") == "+442071838750"
    for bad in ("5550100000", "+1555", "hello", ""):
        with pytest.raises(InvalidPhoneNumber):
            to_e164(bad)


def test_stream_tokens_are_bound_to_a_call_and_expire():
    tokens = StreamTokens("secret", ttl_secs=1)
    token = tokens.mint("call-1")
    tokens.verify(token, "call-1")
    with pytest.raises(TokenError, match="another call"):
        tokens.verify(token, "call-2")
    with pytest.raises(TokenError, match="signature"):
        StreamTokens("other-secret", 60).verify(token, "call-1")
    time.sleep(2.1)
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(token, "call-1")


def test_scripted_rules_match_whole_words_in_order():
    script = Script(ScriptConfig(
        rules=[{"keywords": ["hours", "open"], "reply": "R1"}, {"keywords": ["book a table"], "reply": "R2"}],
        fallback="F", goodbye={"keywords": ["goodbye", "bye"], "reply": "G"},
    ))
    assert script.reply("When are you OPEN?") == ("R1", False)
    assert script.reply("can I book a table") == ("R2", False)
    assert script.reply("reopening soon") == ("F", False)  # not a whole-word match
    assert script.reply("ok, bye then") == ("G", True)
    assert last_user_text([{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant"}]) == "hi"


def test_cloud_providers_build_with_keys_and_redirected_endpoints():
    from pipecat.services.cartesia.tts import CartesiaTTSService
    from pipecat.services.deepgram.stt import DeepgramSTTService
    from pipecat.services.openai.llm import OpenAILLMService

    from config.settings import Settings

    settings = Settings(
        _env_file=None, DEEPGRAM_API_KEY="dg", OPENAI_API_KEY="sk", CARTESIA_API_KEY="ca",
        deepgram_base_url="ws://127.0.0.1:9001", openai_base_url="http://127.0.0.1:9002/v1",
        cartesia_url="ws://127.0.0.1:9003/tts/websocket",
    )
    cfg = AgentConfig(**{**PIPELINE, "transcriber": {"provider": "deepgram", "model": "nova-2-phonecall"},
                         "llm": {"provider": "openai", "model": "gpt-4o-mini"}, "tts": {"provider": "cartesia"}})
    ctx = registry.BuildContext(agent=cfg, settings=settings)
    stt, llm, tts = (registry.build(k, s, ctx) for k, s in (("stt", cfg.transcriber), ("llm", cfg.llm), ("tts", cfg.tts)))
    assert isinstance(stt, DeepgramSTTService) and isinstance(llm, OpenAILLMService) and isinstance(tts, CartesiaTTSService)
    assert str(llm._client.base_url).startswith("http://127.0.0.1:9002/v1")
    assert tts._url == "ws://127.0.0.1:9003/tts/websocket"
