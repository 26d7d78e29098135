"""What a call consumed and what it cost: summed from the usage metrics pipecat's services report,
the audio the carrier carried, the price table in config/prices.yaml, and per-call latency percentiles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pipecat.metrics.metrics import LLMUsageMetricsData, MetricsData, STTUsageMetricsData, TTSUsageMetricsData

from config.agent import AgentConfig
from config.settings import CONFIG_DIR

LINE_BYTES_PER_SEC = 8000  # G.711 μ-law, one byte a sample
PERCENTILES = (50, 90, 95, 99)


@dataclass
class Usage:
    stt_secs: float = 0.0
    llm_tokens_in: int = 0
    llm_tokens_out: int = 0
    llm_audio_tokens_in: int = 0
    llm_audio_tokens_out: int = 0
    tts_characters: int = 0


class UsageMeter:
    """Sums a call's service usage from the usage metrics pipecat's services report (fed by the call's observer,
    runtime/turn_metrics.py); nothing per audio frame."""

    def __init__(self):
        self.usage = Usage()

    def add(self, metrics: MetricsData) -> None:
        u = self.usage
        if isinstance(metrics, STTUsageMetricsData):
            u.stt_secs += metrics.value.audio_seconds
        elif isinstance(metrics, TTSUsageMetricsData):
            u.tts_characters += metrics.value
        elif isinstance(metrics, LLMUsageMetricsData):
            tokens = metrics.value
            audio_in, audio_out = tokens.input_audio_tokens or 0, tokens.output_audio_tokens or 0
            u.llm_tokens_in += tokens.prompt_tokens - audio_in
            u.llm_tokens_out += tokens.completion_tokens - audio_out
            u.llm_audio_tokens_in += audio_in
            u.llm_audio_tokens_out += audio_out

    def summary(self, caller_audio_bytes: int, agent_audio_bytes: int) -> dict[str, Any]:
        u = self.usage
        return {
            "caller_audio_secs": round(caller_audio_bytes / LINE_BYTES_PER_SEC, 2),
            "agent_audio_secs": round(agent_audio_bytes / LINE_BYTES_PER_SEC, 2),
            "stt_secs": round(u.stt_secs, 2),
            "llm_tokens_in": u.llm_tokens_in,
            "llm_tokens_out": u.llm_tokens_out,
            "llm_audio_tokens_in": u.llm_audio_tokens_in,
            "llm_audio_tokens_out": u.llm_audio_tokens_out,
            "tts_characters": u.tts_characters,
        }


@lru_cache
def load_prices(path: Path = CONFIG_DIR / "prices.yaml") -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def _price(prices: dict, kind: str, provider: str | None, model: str | None) -> dict | None:
    entry = (prices.get(kind) or {}).get(provider or "")
    if entry is None:
        return None
    return {**entry, **((entry.get("models") or {}).get(model or "") or {})}


def estimate_cost(agent: AgentConfig, usage: dict[str, Any], call_secs: float, *, carrier: str | None = "twilio",
                  prices: dict | None = None) -> dict[str, Any]:
    """USD by component and in total, rounded to 1/10,000 of a cent; components with no price are listed."""
    prices = load_prices() if prices is None else prices
    parts: dict[str, float] = {}
    unpriced: list[str] = []

    def charge(name: str, kind: str, section, amount) -> None:
        if section is None:
            return
        p = _price(prices, kind, section.provider, getattr(section, "model", None))
        if p is None:
            unpriced.append(f"{kind}:{section.provider}")
            return
        parts[name] = amount(p)

    charge("stt", "stt", agent.transcriber, lambda p: usage["stt_secs"] / 60 * p.get("per_minute", 0))
    charge("llm", "llm", agent.llm, lambda p: (usage["llm_tokens_in"] * p.get("per_million_in", 0)
                                              + usage["llm_tokens_out"] * p.get("per_million_out", 0)) / 1e6)
    charge("tts", "tts", agent.tts, lambda p: usage["tts_characters"] * p.get("per_million_characters", 0) / 1e6)
    charge("realtime", "realtime", agent.realtime, lambda p: (
        usage["llm_tokens_in"] * p.get("per_million_in", 0) + usage["llm_tokens_out"] * p.get("per_million_out", 0)
        + usage["llm_audio_tokens_in"] * p.get("per_million_audio_in", 0)
        + usage["llm_audio_tokens_out"] * p.get("per_million_audio_out", 0)) / 1e6)
    if carrier:
        rate = ((prices.get("carrier") or {}).get(carrier) or {}).get("per_minute")
        if rate is None:
            unpriced.append(f"carrier:{carrier}")
        else:
            parts["carrier"] = math.ceil(call_secs / 60) * rate if call_secs > 0 else 0.0
    rounded = {k: round(v, 6) for k, v in parts.items()}
    return {"currency": "USD", "total": round(sum(parts.values()), 6), "components": rounded, "unpriced": unpriced}


def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile: a value that was measured, never an interpolation between two turns."""
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def latency_summary(turns: list[dict[str, int | None]]) -> dict[str, Any] | None:
    """p50/p90/p95/p99/max of each measure over the call's answered turns (`latency_ms`, `stt_ms`, …)."""
    out: dict[str, Any] = {}
    for measure, key in (("e2e", "latency_ms"), ("stt", "stt_ms"), ("llm", "llm_ms"), ("tts", "tts_ms")):
        values = sorted(v for t in turns if (v := t.get(key)) is not None)
        if values:
            out[measure] = {**{f"p{q}": _percentile(values, q) for q in PERCENTILES}, "max": values[-1],
                            "turns": len(values)}
    return out or None
