"""A call's TTS hands on its words but not pipecat's per-word progress frames (pipelines/providers/tts_progress.py),
through pipecat's own word path (`TTSService._push_word_frames`); a TTS without the trim hands on both."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import AggregatedTextProgressFrame, TTSTextFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.tts_service import TTSService
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.utils.text.base_text_aggregator import TextType

from config.agent import AgentConfig
from config.settings import Settings
from pipelines.factory import build_call_pipeline
from pipelines.providers import registry
from pipelines.providers.registry import BuildContext

AGENT = AgentConfig.model_validate({
    "name": "cloud", "system_prompt": "Be brief.", "transcriber": {"provider": "deepgram"},
    "llm": {"provider": "openai", "model": "gpt-4o-mini"}, "tts": {"provider": "cartesia"}})
SETTINGS = Settings(deepgram_api_key="k", openai_api_key="k", cartesia_api_key="k")


class _Next(FrameProcessor):
    """The processor after the TTS: what reaches it."""

    def __init__(self):
        super().__init__()
        self.got: list = []

    async def queue_frame(self, frame, direction=FrameDirection.DOWNSTREAM, callback=None):
        self.got.append(type(frame).__name__)


class _Socket:
    pass


@pytest.mark.parametrize("calls", [True, False])
async def test_words_reach_the_next_processor_and_progress_frames_only_without_the_trim(calls):
    ctx = BuildContext(agent=AGENT, settings=SETTINGS)
    if calls:
        built = build_call_pipeline(AGENT, FastAPIWebsocketTransport(_Socket(), FastAPIWebsocketParams()), ctx)
        (tts,) = [p for p in built.pipeline.processors if isinstance(p, TTSService)]
    else:
        tts = registry.build("tts", AGENT.tts, ctx)
    after = _Next()
    tts.link(after)
    words = []
    for i, word in enumerate(["Twelve", "Main", "Street."]):
        words += [TTSTextFrame(word, text_type=TextType.WORD),
                  AggregatedTextProgressFrame(segment_id=1, context_id="c1", text="Twelve Main Street.",
                                              text_type=TextType.SENTENCE,
                                              accumulated_text=" ".join(["Twelve", "Main", "Street."][:i + 1]),
                                              remaining_text="")]
        words[-2].pts = i
    await tts._push_word_frames(words)
    if calls:
        assert after.got == ["TTSTextFrame"] * 3
    else:
        assert after.got == ["TTSTextFrame", "AggregatedTextProgressFrame"] * 3
