"""Deterministic replies shared by the chat and Realtime emulators: echo, or keyword rules from a YAML/JSON file.

    greeting: Hello! How can I help you?          # no user message yet
    fallback: "You said: {text}"                  # no rule matched (the default: echo)
    after_tool: "The tool returned: {result}"     # the last message is a tool result
    ask_again: Sorry, I didn't catch that. Could you say it again?   # run on an instruction after the caller's words
    rules:
      - keywords: [weather, forecast]             # whole words or phrases, case-insensitive; first match wins
        tool_call: {name: get_weather, arguments: {city: Paris}}
        after_tool: "In Paris it is {result}."    # optional, for this tool's result
      - keywords: [hours]
        reply: We open at noon.
      - keywords: [explode]
        fault: server_error                       # server_error | rate_limit | drop_stream

A tool_call rule applies only when the request declares that tool; otherwise matching goes on to the next rule.

A conversation whose last message is a `developer` instruction after the caller's words is the model run on that
instruction, not on the words: pipecat's empty-turn recovery (`EmptyUserTurnConfig`) asks the model to have the
caller repeat. A model follows the instruction rather than answering the words before it again, so `ask_again`
answers it (or the instruction's own `say exactly "..."`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FAULTS = ("server_error", "rate_limit", "drop_stream")
_SAY_EXACTLY = re.compile(r'say(?:ing)? exactly:? "([^"]+)"', re.IGNORECASE)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as the APIs carry it


@dataclass
class Decision:
    text: str = ""
    tool_call: ToolCall | None = None
    fault: str | None = None


@dataclass
class Rule:
    pattern: re.Pattern
    reply: str | None = None
    tool_call: ToolCall | None = None
    after_tool: str | None = None
    fault: str | None = None


def _pattern(keywords: list[str]) -> re.Pattern:
    words = "|".join(re.escape(str(k).lower()) for k in keywords)
    return re.compile(rf"(?<![\w'])(?:{words})(?![\w'])")


def _rule(i: int, raw: Any) -> Rule:
    if not isinstance(raw, dict) or not raw.get("keywords"):
        raise ValueError(f"rule {i}: needs a non-empty 'keywords' list")
    keywords = raw["keywords"] if isinstance(raw["keywords"], list) else [raw["keywords"]]
    actions = [k for k in ("reply", "tool_call", "fault") if k in raw]
    if len(actions) != 1:
        raise ValueError(f"rule {i}: needs exactly one of 'reply', 'tool_call', 'fault' (has {actions or 'none'})")
    rule = Rule(_pattern(keywords), reply=raw.get("reply"), after_tool=raw.get("after_tool"), fault=raw.get("fault"))
    if rule.fault is not None and rule.fault not in FAULTS:
        raise ValueError(f"rule {i}: fault must be one of {', '.join(FAULTS)}")
    if "tool_call" in raw:
        call = raw["tool_call"]
        if not isinstance(call, dict) or not call.get("name"):
            raise ValueError(f"rule {i}: tool_call needs a 'name'")
        args = call.get("arguments", {})
        rule.tool_call = ToolCall(call["name"], args if isinstance(args, str) else json.dumps(args))
    return rule


def message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text") or p.get("transcript") or "") for p in content if isinstance(p, dict)).strip()
    return ""


@dataclass
class Rules:
    rules: list[Rule] = field(default_factory=list)
    greeting: str = "Hello! How can I help you?"
    fallback: str = "You said: {text}"
    after_tool: str = "The tool returned: {result}"
    ask_again: str = "Sorry, I didn't catch that. Could you say it again?"

    @classmethod
    def parse(cls, data: dict | None) -> Rules:
        data = data or {}
        if not isinstance(data, dict):
            raise ValueError("the rules file must hold a mapping (rules, greeting, fallback, after_tool, ask_again)")
        unknown = set(data) - {"rules", "greeting", "fallback", "after_tool", "ask_again"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        defaults = cls()
        return cls(
            rules=[_rule(i, r) for i, r in enumerate(data.get("rules") or [])],
            greeting=data.get("greeting", defaults.greeting),
            fallback=data.get("fallback", defaults.fallback),
            after_tool=data.get("after_tool", defaults.after_tool),
            ask_again=data.get("ask_again", defaults.ask_again),
        )

    @classmethod
    def load(cls, path: str | Path | None) -> Rules:
        if path is None:
            return cls()
        try:
            data = yaml.safe_load(Path(path).read_text())  # JSON is YAML, so one parser reads both
        except yaml.YAMLError as exc:
            raise ValueError(f"not YAML or JSON: {exc}") from exc
        return cls.parse(data)

    def decide(self, messages: list[dict], tools: set[str]) -> Decision:
        """What the model answers to a chat-completions-shaped conversation, given the tools it may call."""
        turns = [m for m in messages if isinstance(m, dict) and m.get("role") not in ("system", "developer")]
        if turns and turns[-1].get("role") == "tool":
            return Decision(text=self._after_tool(turns, turns[-1]))
        said = next((message_text(m) for m in reversed(turns) if m.get("role") == "user"), None)
        if said is None:
            return Decision(text=self.greeting)
        last = next((m for m in reversed(messages) if isinstance(m, dict)), {})
        if last.get("role") == "developer":  # run on an instruction that came after the caller's words
            quoted = _SAY_EXACTLY.search(message_text(last))
            return Decision(text=quoted.group(1) if quoted else self.ask_again)
        if (quoted := _SAY_EXACTLY.search(said)) is not None:  # an instruction a model would simply follow
            return Decision(text=quoted.group(1))
        lowered = said.lower()
        for rule in self.rules:
            if not rule.pattern.search(lowered):
                continue
            if rule.fault:
                return Decision(fault=rule.fault)
            if rule.tool_call:
                if rule.tool_call.name in tools:
                    return Decision(tool_call=rule.tool_call)
                continue
            return Decision(text=_fill(rule.reply or "", text=said))
        return Decision(text=_fill(self.fallback, text=said))

    def _after_tool(self, turns: list[dict], result: dict) -> str:
        call_id = result.get("tool_call_id")
        name = next(
            (c.get("function", {}).get("name", "") for m in turns for c in (m.get("tool_calls") or [])
             if c.get("id") == call_id),
            "",
        )
        template = next((r.after_tool for r in self.rules if r.tool_call and r.tool_call.name == name and r.after_tool),
                        self.after_tool)
        return _fill(template, result=message_text(result), name=name)


def _fill(template: str, **values: str) -> str:
    # Not str.format: a tool result is often JSON, whose braces would break it.
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def tool_names(tools: list | None) -> set[str]:
    """Function names from a chat `tools` list ({type, function: {name}}) or a Realtime one ({type, name})."""
    names = set()
    for tool in tools or []:
        if isinstance(tool, dict) and tool.get("type", "function") == "function":
            name = (tool.get("function") or {}).get("name") or tool.get("name")
            if name:
                names.add(name)
    return names


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0
