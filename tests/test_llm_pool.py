"""The server's connection pool for the LLM (openai_llm.shared_pool), as calls use it one after another: a kept
connection is reused by the next call's client, and one the provider closed while it sat idle is replaced, not
used, so the request neither fails nor needs the SDK's retry. The OpenAI emulator (uvicorn, which closes a
connection idle for 5 s, as providers close theirs after their own idle time) answers on loopback."""

from __future__ import annotations

import asyncio

from pipelines.providers import emulators
from pipelines.providers.openai_llm import SharedTLSOpenAILLMService, shared_pool


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
