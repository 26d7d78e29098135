"""Filling a call's analysis from its transcript with the agent's LLM provider: `extract(agent, turns, wanted)`.

- `openai` (and OpenAI-compatible servers via `llm.base_url`): one chat completion asking for a JSON object that
  the JSON Schema of the wanted fields describes (JSON mode, temperature 0). Output that is not JSON or does not
  match the schema is sent back once with what was wrong; a second invalid answer is an analysis error. An agent's
  own base URL gets the server's OPENAI_API_KEY only when trusted, as in calls (config/provider_trust.py).
- `scripted`: the deterministic extractor below, so analysis runs with no model and no account.
- anything else: an analysis error naming the provider.

Realtime agents have no `llm` section: those on OpenAI Realtime are analysed with OpenAI chat completions (the
catalog's default chat model).

The scripted extractor reads the caller's turns (role `user`), split into sentences after `.`, `?` and `!`. A field's
keywords are its `keywords`, or else the words of its name (`party_size` → party, size); matching is by whole
words, case-insensitive.
- boolean: true when any keyword appears in the caller's turns, else false.
- number: the first number (digits, or an English number word from zero to twenty or a multiple of ten up to
  ninety) in the first caller sentence holding a keyword; without such a sentence, the first number the caller
  said; else null.
- string: the first caller sentence holding a keyword; else null.
- enum: the first choice (in its order) all of whose words appear in the caller's turns; else the first whose words
  all appear in the agent's turns; else null.
- summary: `Caller: <first caller turn> Agent: <last agent turn>` (either part left out when there is none).
A required field it cannot fill is an analysis error, as an LLM's null would be.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from config import catalog, provider_trust
from config.agent import AgentConfig
from config.settings import Settings
from runtime.analysis.rules import InvalidOutput, RuleField, Wanted


class AnalysisError(RuntimeError):
    """The analysis could not be done; the message is stored on the call."""


@dataclass
class Turn:
    role: str  # user | assistant (other transcript roles are left out)
    text: str


def transcript_text(turns: list[Turn]) -> str:
    return "\n".join(f"{'Caller' if t.role == 'user' else 'Agent'}: {t.text}" for t in turns)


async def extract(agent: AgentConfig, turns: list[Turn], wanted: Wanted, settings: Settings, *,
                  http_pool: Any = None) -> dict[str, Any]:
    """`{"fields": {...}, "summary": str?, "provider": ..., "model": ...}`, or AnalysisError. `http_pool`: the
    server's connections to OpenAI-compatible endpoints (openai_llm.shared_pool), used and left open."""
    if agent.llm is not None:
        provider, model, base_url = agent.llm.provider, agent.llm.model, agent.llm.base_url
    elif agent.realtime is not None and agent.realtime.provider == "openai":
        provider, model, base_url = "openai", None, None
    else:
        raise AnalysisError("post-call analysis needs an LLM; the agent has none")
    if provider == "scripted":
        return {**_checked(wanted, scripted(turns, wanted)), "provider": "scripted", "model": "scripted"}
    if provider == "openai":
        model = model or catalog.provider("llm", "openai").default_model
        result = await _openai(turns, wanted, settings, model, base_url, who=f"analysis of agent {agent.name!r}",
                               http_pool=http_pool)
        return {**result, "provider": "openai", "model": model}
    raise AnalysisError(f"post-call analysis is not available for LLM provider {provider!r}")


def _checked(wanted: Wanted, raw: Any) -> dict[str, Any]:
    try:
        return wanted.validate(raw)
    except InvalidOutput as exc:
        raise AnalysisError(f"the scripted extractor could not fill the rules: {exc}") from None


# --- scripted -------------------------------------------------------------------------------------------------------

_NUMBER_WORDS = {w: i for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"])}
_NUMBER_WORDS.update({w: 10 * i for i, w in enumerate(["thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], 3)})
_NUMBER = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)(?![\w])|(?<![\w'])(" + "|".join(_NUMBER_WORDS) + r")(?![\w'])",
                     re.IGNORECASE)


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^\w']+|_", text.lower()) if w]


def _has(text: str, phrase: str) -> bool:
    words = _words(phrase)
    return bool(words) and re.search(r"(?<![\w'])" + r"[\W_]+".join(map(re.escape, words)) + r"(?![\w'])",
                                     text.lower()) is not None


def _keywords(f: RuleField) -> list[str]:
    return f.keywords or _words(f.name)


def _sentences(turns: list[str]) -> list[str]:
    return [s.strip() for t in turns for s in re.split(r"(?<=[.?!])\s+", t) if s.strip()]


def _first_number(text: str) -> int | float | None:
    m = _NUMBER.search(text)
    if m is None:
        return None
    if m.group(1):
        value = float(m.group(1))
        return int(value) if value.is_integer() else value
    return _NUMBER_WORDS[m.group(2).lower()]


def scripted(turns: list[Turn], wanted: Wanted) -> dict[str, Any]:
    caller = [t.text for t in turns if t.role == "user"]
    agent = [t.text for t in turns if t.role == "assistant"]
    said, answered = " ".join(caller), " ".join(agent)
    sentences = _sentences(caller)
    fields: dict[str, Any] = {}
    for f in wanted.fields.values():
        keys = _keywords(f)
        hit = next((s for s in sentences if any(_has(s, k) for k in keys)), None)
        if f.type == "boolean":
            fields[f.name] = any(_has(said, k) for k in keys)
        elif f.type == "number":
            found = _first_number(hit) if hit else None
            fields[f.name] = found if found is not None else _first_number(said)
        elif f.type == "string":
            fields[f.name] = hit
        else:
            fields[f.name] = next((c for c in f.choices or [] if _all_in(said, c)), None)
            if fields[f.name] is None:
                fields[f.name] = next((c for c in f.choices or [] if _all_in(answered, c)), None)
    out: dict[str, Any] = {"fields": fields}
    if wanted.summary:
        parts = ([f"Caller: {caller[0]}"] if caller else []) + ([f"Agent: {agent[-1]}"] if agent else [])
        out["summary"] = " ".join(parts)
    return out


def _all_in(text: str, choice: str) -> bool:
    words = _words(choice)
    return bool(words) and all(_has(text, w) for w in words)


# --- OpenAI chat completions ----------------------------------------------------------------------------------------

def _instructions(wanted: Wanted) -> str:
    lines = ["You analyse a finished phone call between a caller and an AI voice agent, from its transcript.",
             "Reply with only a JSON object (no prose, no code fence) that matches this JSON Schema:",
             json.dumps(wanted.json_schema(), separators=(",", ":")),
             "Use null for a field the transcript does not tell, unless the schema requires a value."]
    hints = [f"- {f.name}: listen for {', '.join(f.keywords)}" for f in wanted.fields.values() if f.keywords]
    if hints:
        lines += ["Words that signal a field:", *hints]
    if wanted.descriptions:
        lines += ["What the analysis is for:", *(f"- {d}" for d in wanted.descriptions)]
    return "\n".join(lines)


async def _openai(turns: list[Turn], wanted: Wanted, settings: Settings, model: str, own_url: str | None, *,
                  who: str, http_pool: Any = None) -> dict:
    """`own_url` is the agent's `llm.base_url` (None: the server's endpoint)."""
    import openai

    from pipelines.providers.openai_llm import shared_pool
    from pipelines.providers.tls import tls_context

    if provider_trust.withhold_server_key(settings, "openai", own_url, who=who):
        api_key = provider_trust.NO_SERVER_KEY
    elif settings.openai_api_key is None:
        raise AnalysisError("OPENAI_API_KEY is not set")
    else:
        api_key = settings.openai_api_key.get_secret_value()
    # Analyses run on the event loop of the live calls. An HTTP client of the SDK's own making loads the CA store
    # into a new TLS context (~20-60 ms, every call's audio waiting), and dials anew; the server's pool or at least
    # its one TLS context instead. Only a client made here is closed here.
    if provider_trust.held_to_public_addresses(settings, "openai", own_url):
        from pipelines.providers.endpoint_guard import public_only_client

        http_client, owned = public_only_client(who=who, field="llm.base_url", verify=tls_context()), True
    elif http_pool is not None:
        http_client, owned = http_pool, False
    else:
        http_client, owned = shared_pool(), True
    client = openai.AsyncOpenAI(api_key=api_key, base_url=own_url or settings.openai_base_url,
                                timeout=settings.analysis_timeout_secs, max_retries=1, http_client=http_client)
    messages: list[dict[str, str]] = [
        {"role": "system", "content": _instructions(wanted)},
        {"role": "user", "content": "Transcript:\n" + (transcript_text(turns) or "(nobody said anything)")},
    ]
    problems: list[str] = []
    try:
        for attempt in (1, 2):
            try:
                reply = await client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                             response_format={"type": "json_object"})
            except openai.OpenAIError as exc:
                raise AnalysisError(f"openai ({model}): {type(exc).__name__}: {exc}"[:2000]) from None
            text = (reply.choices[0].message.content or "") if reply.choices else ""
            try:
                return wanted.validate(json.loads(text))
            except json.JSONDecodeError as exc:
                problem = f"not a JSON object ({exc.msg} at character {exc.pos})"
            except InvalidOutput as exc:
                problem = str(exc)
            problems.append(problem)
            messages += [{"role": "assistant", "content": text},
                         {"role": "user", "content": f"That reply was invalid: {problem}. Answer again with only "
                                                     "the JSON object the schema describes."}]
    finally:
        if owned:
            await http_client.aclose()
    raise AnalysisError(f"openai ({model}) gave invalid output twice: first {problems[0]}; then {problems[1]}"[:2000])
