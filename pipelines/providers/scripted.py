"""`scripted`: a deterministic LLM driven by the agent config, so a real conversation runs with no model and no key.

Rules are checked in order against the caller's last turn; the first whose keyword appears (whole words,
case-insensitive) answers; otherwise the fallback does. The goodbye rule answers and then ends the call. A turn the
STT made nothing of ends with pipecat's instruction to ask the caller to repeat (a `developer` message, the last
in the context; pipecat's `EmptyUserTurnConfig`): the fallback answers it too, not the caller's words before it.

A rule with a `tool` goes through pipecat's real function calling, as a cloud model's tool call would: the LLM asks
for the call, the registered handler runs it, the assistant aggregator puts the result in the context and runs the
LLM again, and only then does the rule answer, with the tool's result in place of `{result}`.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Awaitable, Callable

from loguru import logger
from pipecat.frames.frames import (
    EndWorkerFrame,
    Frame,
    FunctionCallFromLLM,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings

from config.agent import ScriptConfig, ScriptRule
from pipelines.tools.result import payload_text

# Said instead of a tool rule's reply when its tool failed: the conversation goes on.
TOOL_ERROR_REPLY = "I'm sorry, I couldn't complete that just now."


def _pattern(rule: ScriptRule) -> re.Pattern:
    words = "|".join(re.escape(k.lower()) for k in rule.keywords)
    return re.compile(rf"(?<![\w'])(?:{words})(?![\w'])")


class Script:
    def __init__(self, cfg: ScriptConfig):
        self._rules = [(_pattern(r), r) for r in cfg.rules]
        self._goodbye = (_pattern(cfg.goodbye), cfg.goodbye) if cfg.goodbye else None
        self.fallback = cfg.fallback

    def match(self, said: str) -> tuple[ScriptRule | None, bool]:
        """(the rule that answers, or None for the fallback; ends_call) for what the caller said."""
        said = said.lower()
        if self._goodbye and self._goodbye[0].search(said):
            return self._goodbye[1], True
        for pattern, rule in self._rules:
            if pattern.search(said):
                return rule, False
        return None, False

    def reply(self, said: str) -> tuple[str, bool]:
        """(reply, ends_call) for what the caller said."""
        rule, ends_call = self.match(said)
        return (rule.reply if rule else self.fallback), ends_call


def last_user_text(messages: list) -> str:
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _tool_message(messages: list) -> dict | None:
    """The last message when it is a tool's answer: the LLM is being run on a tool result."""
    last = messages[-1] if messages else None
    return last if isinstance(last, dict) and last.get("role") == "tool" else None


def _asks_again(messages: list) -> bool:
    """The model is run on an instruction, not on the caller's words: pipecat's empty-turn recovery."""
    last = messages[-1] if messages else None
    return isinstance(last, dict) and last.get("role") == "developer"


class ScriptedLLMService(LLMService):
    def __init__(self, script: ScriptConfig, *, on_goodbye: Callable[[], Awaitable[None]] | None = None, **kwargs):
        unused = {f.name: None for f in dataclasses.fields(LLMSettings) if f.name not in ("model", "extra")}
        super().__init__(settings=LLMSettings(model="scripted", **unused), **kwargs)
        self._script = Script(script)
        self._on_goodbye = on_goodbye
        self._calls: dict[str, ScriptRule] = {}  # tool call id → the rule that made it

    def can_generate_metrics(self) -> bool:
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        messages = frame.context.get_messages()
        if (answer := _tool_message(messages)) is not None:
            await self._after_tool(answer, messages)
            return
        if _asks_again(messages):
            await self._say(self._script.fallback)
            return
        rule, ends_call = self._script.match(last_user_text(messages))
        if rule is not None and rule.tool and self.has_function(rule.tool):
            await self._call_tool(rule, frame)
            return
        if rule is not None and rule.tool:  # nothing registered under that name: as if the tool had failed
            logger.warning(f"scripted LLM: no tool named {rule.tool!r} is available to this agent")
            await self._say(TOOL_ERROR_REPLY)
            return
        await self._say(rule.reply if rule else self._script.fallback, ends_call=ends_call)

    async def _call_tool(self, rule: ScriptRule, frame: LLMContextFrame) -> None:
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        self._calls[call_id] = rule
        await self.push_frame(LLMFullResponseStartFrame())
        await self.run_function_calls([FunctionCallFromLLM(function_name=rule.tool, tool_call_id=call_id,
                                                           arguments=dict(rule.arguments), context=frame.context)])
        await self.push_frame(LLMFullResponseEndFrame())

    async def _after_tool(self, answer: dict, messages: list) -> None:
        content = answer.get("content")
        if content == "IN_PROGRESS":  # run while the call is still going: nothing to say yet
            return
        rule = self._calls.pop(answer.get("tool_call_id"), None)
        if rule is None:  # a call made by another instance (a chat turn resumed): the same words pick the same rule
            rule, _ = self._script.match(last_user_text(messages))
        text, failed = payload_text(content if isinstance(content, str) else "")
        if failed or rule is None:
            await self._say(TOOL_ERROR_REPLY)
        else:
            await self._say(rule.reply.replace("{result}", text))

    async def _say(self, reply: str, *, ends_call: bool = False) -> None:
        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        await self.start_ttfb_metrics()  # reported like a real model's, so a turn's latency breakdown is complete
        await self._push_llm_text(reply)
        await self.stop_ttfb_metrics()
        await self.stop_processing_metrics()
        await self.push_frame(LLMFullResponseEndFrame())
        if ends_call:
            if self._on_goodbye:
                await self._on_goodbye()
            # Downstream, behind the reply, so the goodbye is spoken in full before the pipeline ends.
            await self.push_frame(EndWorkerFrame(reason="agent_hangup"))
