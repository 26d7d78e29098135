"""An ended call's pipecat objects are emptied (runtime/call_teardown.py) so reference counting frees the call:
over real pipecat objects with the cyclic collector off, over two calls' real pipelines (nothing shared is
touched), and end to end (a real call is released, and nothing touches its objects afterwards)."""

from __future__ import annotations

import asyncio
import gc
import re
import time
import weakref

import httpx

from pipecat.frames.frames import EndFrame, InputAudioRawFrame, TTSTextFrame
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.aggregators.dtmf_aggregator import DTMFAggregator
from pipecat.services.llm_service import LLMService
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

from config.agent import AgentConfig
from config.settings import Settings
from pipelines.factory import build_call_pipeline
from pipelines.providers.registry import BuildContext
from pipelines.turns.heard import HeardTextGate
from runtime import call_observer, call_teardown
from tests.calls import converse
from tests.pipelines import SilentCarrier, running


async def _finished_worker() -> PipelineWorker:
    """A worker that ran and ended, its processors wired the way a call's are (neighbours, worker, handlers)."""
    worker, collect, task = await running(DTMFAggregator(), HeardTextGate(SilentCarrier(), mark_timeout=0.1))
    for _ in range(5):
        await worker.queue_frame(InputAudioRawFrame(audio=bytes(640), sample_rate=8000, num_channels=1))
    await worker.queue_frame(TTSTextFrame("Hello.", text_type="sentence"))
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(task, 10)
    assert worker.has_finished() and collect.frames >= 5
    return worker


async def _freed_without_the_collector(release: bool) -> bool:
    worker = await _finished_worker()
    pipeline = weakref.ref(worker._pipeline)
    gc.collect()
    gc.disable()
    try:
        if release:
            assert call_teardown.release(call_teardown.call_objects(worker)) >= 8
        del worker
        return pipeline() is None
    finally:
        gc.enable()
        gc.collect()


async def test_a_released_call_is_freed_by_reference_counting():
    assert await _freed_without_the_collector(release=True)


async def test_without_the_release_only_the_cyclic_collector_frees_a_call():
    assert not await _freed_without_the_collector(release=False)


def _built(agent: AgentConfig, settings: Settings):
    class _Socket:
        pass

    transport = FastAPIWebsocketTransport(_Socket(), FastAPIWebsocketParams())
    built = build_call_pipeline(agent, transport, BuildContext(agent=agent, settings=settings))
    worker = PipelineWorker(built.pipeline, enable_rtvi=False, enable_turn_tracking=False)
    call_observer.install(worker)
    return call_teardown.call_objects(worker, transport, built.user_aggregator, built.assistant_aggregator)


def test_two_calls_share_nothing_that_is_released():
    agent = AgentConfig.model_validate({
        "name": "cloud", "system_prompt": "Be brief.", "transcriber": {"provider": "deepgram"},
        "llm": {"provider": "openai", "model": "gpt-4o-mini"}, "tts": {"provider": "cartesia"}})
    settings = Settings(deepgram_api_key="k", openai_api_key="k", cartesia_api_key="k")
    first, second = _built(agent, settings), _built(agent, settings)
    assert not {id(o) for o in first} & {id(o) for o in second}
    kinds = {type(o) for o in first}
    for base in (STTService, LLMService, TTSService):
        assert any(issubclass(k, base) for k in kinds), base
    # The transport's two ends, and the controllers the user aggregator holds (turn strategies, VAD); the plain
    # objects made for the call: the websocket client, the TTS's audio contexts, the SDK clients and Deepgram's
    # client wrapper. Not the HTTP pool the server shares, which the OpenAI client holds.
    assert {"FastAPIWebsocketInputTransport", "FastAPIWebsocketOutputTransport", "FastAPIWebsocketTransport",
            "UserTurnController", "VADController", "PipelineWorker", "FastAPIWebsocketClient", "AudioContextManager",
            "ChunkValidatingAsyncOpenAI", "SharedTLSDeepgramClient", "AsyncClientWrapper",
            } <= {k.__name__ for k in kinds}
    assert not any(isinstance(o, httpx.AsyncClient) for o in first + second)


async def test_a_real_call_is_released_and_nothing_touches_it_afterwards(server, speech):
    caller, _, _ = await converse(server, speech["located"])
    call_id = caller.answer.parameters["call_id"]
    server.wait_ended(call_id, timeout=5.0)
    pattern, deadline = rf"call {call_id}: released (\d+) pipecat objects", time.monotonic() + 5
    while not (released := re.search(pattern, server.log())) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert released, "the ended call was not released"
    assert int(released.group(1)) >= 20
    await asyncio.sleep(3.5)  # past the longest timer a call's processors arm (the 3 s mark timeout)
    log = server.log()
    assert "has no attribute" not in log and "Exception in callback" not in log, log[-4000:]
