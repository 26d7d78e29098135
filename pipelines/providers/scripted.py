"""`scripted`: a deterministic LLM driven by the agent config, so a real conversation runs with no model and no key.

Rules are checked in order against the caller's last turn; the first whose keyword appears (whole words,
case-insensitive) answers; otherwise the fallback does. The goodbye rule answers and then ends the call.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable

from pipecat.frames.frames import (
    EndWorkerFrame,
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings

from config.agent import ScriptConfig, ScriptRule


def _pattern(rule: ScriptRule) -> re.Pattern:
    words = "|".join(re.escape(k.lower()) for k in rule.keywords)
    return re.compile(rf"(?<![\w'])(?:{words})(?![\w'])")


class Script:
    def __init__(self, cfg: ScriptConfig):
        self._rules = [(_pattern(r), r.reply) for r in cfg.rules]
        self._goodbye = (_pattern(cfg.goodbye), cfg.goodbye.reply) if cfg.goodbye else None
        self._fallback = cfg.fallback

    def reply(self, said: str) -> tuple[str, bool]:
        """(reply, ends_call) for what the caller said."""
        said = said.lower()
        if self._goodbye and self._goodbye[0].search(said):
            return self._goodbye[1], True
        for pattern, reply in self._rules:
            if pattern.search(said):
                return reply, False
        return self._fallback, False


def last_user_text(messages: list) -> str:
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class ScriptedLLMService(LLMService):
    def __init__(self, script: ScriptConfig, *, on_goodbye: Callable[[], Awaitable[None]] | None = None, **kwargs):
        unused = {f.name: None for f in dataclasses.fields(LLMSettings) if f.name not in ("model", "extra")}
        super().__init__(settings=LLMSettings(model="scripted", **unused), **kwargs)
        self._script = Script(script)
        self._on_goodbye = on_goodbye

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        reply, ends_call = self._script.reply(last_user_text(frame.context.get_messages()))
        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        await self._push_llm_text(reply)
        await self.stop_processing_metrics()
        await self.push_frame(LLMFullResponseEndFrame())
        if ends_call:
            if self._on_goodbye:
                await self._on_goodbye()
            # Downstream, behind the reply, so the goodbye is spoken in full before the pipeline ends.
            await self.push_frame(EndWorkerFrame(reason="agent_hangup"))
