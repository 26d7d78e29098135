"""Per-call variables: `{{name}}` placeholders in an agent's texts, filled from the call's `variables`.

Checked when a call is placed (a placeholder without a value is refused, naming it) and filled when the call's
pipeline is built. A call with no value for a placeholder (an inbound call has no variables) keeps it as written:
an LLM reads `{{name}}` as "not known", where an empty string would leave a sentence with a hole in it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from config.agent import AgentConfig

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")


def _texts(agent: AgentConfig) -> list[str]:
    texts = [agent.system_prompt, agent.welcome_message]
    if agent.call.transfer is not None:
        texts.append(agent.call.transfer.message)
    return [t for t in texts if t]


def placeholders(agent: AgentConfig) -> set[str]:
    return {m.group(1) for text in _texts(agent) for m in PLACEHOLDER.finditer(text)}


def _given(value: object) -> bool:
    return value is not None and str(value).strip() != ""


def missing(agent: AgentConfig, variables: Mapping[str, object] | None) -> list[str]:
    """The placeholders the call has no value for (a blank value counts as none), sorted."""
    values = variables or {}
    return sorted(name for name in placeholders(agent) if not _given(values.get(name)))


def fill(text: str | None, variables: Mapping[str, object]) -> str | None:
    if not text:
        return text

    def value(m: re.Match) -> str:
        found = variables.get(m.group(1))
        return str(found) if _given(found) else m.group(0)

    return PLACEHOLDER.sub(value, text)


def render(agent: AgentConfig, variables: Mapping[str, object] | None) -> AgentConfig:
    """A copy of the agent with its placeholders filled; those without a value stay as written."""
    values = variables or {}
    update: dict = {"system_prompt": fill(agent.system_prompt, values),
                    "welcome_message": fill(agent.welcome_message, values)}
    if agent.call.transfer is not None:
        transfer = agent.call.transfer.model_copy(update={"message": fill(agent.call.transfer.message, values)})
        update["call"] = agent.call.model_copy(update={"transfer": transfer})
    return agent.model_copy(update=update)
