"""The server's connection pool for the LLM (openai_llm.shared_pool), as calls use it one after another: a kept
connection is reused by the next call's client, and one the provider closed while it sat idle is replaced, not
used, so the request neither fails nor needs the SDK's retry. Post-call analyses use it too, and make no TLS context
of their own on the calls' event loop. The OpenAI emulator (uvicorn, which closes a connection idle for 5 s, as
providers close theirs after their own idle time) answers on loopback."""

from __future__ import annotations

import asyncio
import json
import ssl

from config.agent import AgentConfig
from config.settings import Settings
from pipelines.providers import emulators
from pipelines.providers.openai_llm import SharedTLSOpenAILLMService, shared_pool
from pipelines.providers.tls import tls_context
from runtime.analysis.extract import Turn, extract
from runtime.analysis.rules import RuleDefinition, Wanted


async def test_a_kept_connection_is_reused_and_one_the_provider_closed_is_replaced():
    running = await emulators.start("openai")
    chat = running.emulator
    pool = shared_pool()
    try:
        async def call_asks() -> str:
            # A new service per call, as the pipeline factory builds one; no retries, so a request written to a
            # dead connection would fail here instead of being retried out of sight.
            llm = SharedTLSOpenAILLMService(api_key="k", base_url=running.url, pool=pool)
            client = llm._client.with_options(max_retries=0)
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "Hello"}])
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        assert await call_asks() and await call_asks()
        assert len(chat.peers) == 2 and chat.peers[0] == chat.peers[1], chat.peers
        await asyncio.sleep(5.5)  # past uvicorn's keep-alive: the emulator closes the idle connection
        assert await call_asks()
        assert len(chat.peers) == 3 and chat.peers[2] != chat.peers[0], chat.peers
    finally:
        await pool.aclose()
        await running.close()


async def test_post_call_analyses_share_the_pool_and_load_no_ca_store(monkeypatch):
    reply = json.dumps({"fields": {"dish": "lasagna"}})
    running = await emulators.start("openai", rules=emulators.Rules.parse(
        {"rules": [{"keywords": ["lasagna"], "reply": reply}]}))
    settings = Settings(_env_file=None, OPENAI_API_KEY="sk-test", openai_base_url=running.url)
    agent = AgentConfig(name="analysed", architecture="text", system_prompt="p",
                        llm={"provider": "openai", "model": "gpt-4o-mini"})
    wanted = Wanted([("r1", RuleDefinition(fields=[{"name": "dish", "type": "string", "description": "The dish."}]))])
    tls_context()  # the server makes it at start-up
    loads: list[object] = []  # CA stores loaded into a new TLS context: ~20-60 ms each, on the event loop
    load = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations",
                        lambda ctx, *a, **k: (loads.append(a or k), load(ctx, *a, **k))[1])
    pool = shared_pool()
    try:
        for http_pool in (pool, pool, None):  # the server's two analyses, then one without a pool (a script's)
            result = await extract(agent, [Turn("user", "Lasagna please.")], wanted, settings, http_pool=http_pool)
            assert result["fields"] == {"dish": "lasagna"}, result
        assert not pool.is_closed  # the analysis left the server's pool open
        assert loads == []
        peers = running.emulator.peers
        assert len(peers) == 3 and peers[0] == peers[1] != peers[2], peers
    finally:
        await pool.aclose()
        await running.close()
