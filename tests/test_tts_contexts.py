"""A TTS service's audio contexts read without a task per item (pipelines/providers/tts_contexts.py): pipecat's
own AudioContextManager, read through the replacement: items in order, keepalives skipped (each restarting the
wait), a quiet context timing out as in pipecat; and a call's pipeline has its TTS read that way."""

from __future__ import annotations

import asyncio

import pytest
from pipecat.services.tts_service import TTSService
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.utils.context.audio_context_manager import AudioContextManager

from config.agent import AgentConfig
from config.settings import Settings
from pipelines.factory import build_call_pipeline
from pipelines.providers.registry import BuildContext
from pipelines.providers.tts_contexts import read_inline
from tests.tasks import tasks_made


class _Holder:
    """What read_inline reads of a TTS service: its audio context manager (pipecat's own)."""

    def __init__(self):
        self._audio_context_manager = AudioContextManager()


@pytest.mark.parametrize("inline", [True, False])
async def test_items_come_in_order_and_keepalives_only_restart_the_wait(inline):
    holder = _Holder()
    if inline:
        read_inline(holder)
    manager = holder._audio_context_manager
    await manager.create("c1")
    with tasks_made() as tasks:
        for i in range(5):
            await manager.append("c1", f"chunk {i}")
        got = [await manager.get("c1", timeout=1.0) for _ in range(5)]

        async def later():  # two keepalives 0.15 s apart, then an item: 0.3 s after a 0.2 s deadline was set
            for _ in range(2):
                await asyncio.sleep(0.15)
                manager.keepalive("c1")
            await asyncio.sleep(0.15)
            await manager.append("c1", "after the keepalives")

        feeder = asyncio.create_task(later())
        got.append(await manager.get("c1", timeout=0.2))
        await feeder
        with pytest.raises(TimeoutError):
            await manager.get("c1", timeout=0.1)  # a quiet context: pipecat then ends it
    assert got == [f"chunk {i}" for i in range(5)] + ["after the keepalives"]
    per_item = [t for t in tasks if t == "Queue.get"]
    if inline:
        assert per_item == []
    else:  # pipecat's `asyncio.wait_for`: a task for every item and every wait
        assert len(per_item) >= 8, tasks


@pytest.mark.parametrize("inline", [True, False])
async def test_a_burst_of_queued_audio_lets_the_loop_run_between_items(inline):
    """A provider sends a reply's audio faster than real time. If the playing task took a queued burst without
    letting the loop run, the output transport could not write the first chunk until the whole burst was handed on
    (3 calls: runtime overhead p50 ~9 → 14-25 ms)."""
    holder = _Holder()
    if inline:
        read_inline(holder)
    manager = holder._audio_context_manager
    await manager.create("c1")
    for i in range(50):
        await manager.append("c1", i)
    order: list = []

    async def writer():
        order.append("written")

    task = asyncio.get_running_loop().create_task(writer())  # runs at the loop's next turn
    for _ in range(50):
        order.append(await manager.get("c1", timeout=1.0))
    await task
    assert order.index("written") <= 1, order
    assert [x for x in order if x != "written"] == list(range(50))


def test_a_calls_tts_reads_its_audio_contexts_inline():
    agent = AgentConfig.model_validate({
        "name": "cloud", "system_prompt": "Be brief.", "transcriber": {"provider": "deepgram"},
        "llm": {"provider": "openai", "model": "gpt-4o-mini"}, "tts": {"provider": "cartesia"}})
    settings = Settings(deepgram_api_key="k", openai_api_key="k", cartesia_api_key="k")

    class _Socket:
        pass

    transport = FastAPIWebsocketTransport(_Socket(), FastAPIWebsocketParams())
    built = build_call_pipeline(agent, transport, BuildContext(agent=agent, settings=settings))
    (tts,) = [p for p in built.pipeline.processors if isinstance(p, TTSService)]
    assert "get" in vars(tts._audio_context_manager)  # the instance's own reader, not AudioContextManager.get
