"""Per-turn latency of a call, from pipecat's UserBotLatencyObserver: caller stopped speaking (VAD stop minus its
`stop_secs`) → the agent's first audio sent, and the STT, LLM and TTS time-to-first-byte inside it. Each measurement
waits here for the agent turn it belongs to, and is stored with that turn's transcript entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger
from pipecat.frames.frames import MetricsFrame
from pipecat.metrics.metrics import MetricsData
from pipecat.observers.base_observer import FramePushed
from pipecat.observers.user_bot_latency_observer import LatencyBreakdown, UserBotLatencyObserver

from runtime.metrics import SERVICE_TTFB, TURN_LATENCY, TURN_OVERHEAD


@dataclass
class TurnLatency:
    latency_ms: int
    stt_ms: int | None = None
    llm_ms: int | None = None
    tts_ms: int | None = None
    # End-of-turn decision → first agent audio: the runtime's own share of the reply (not stored per entry).
    overhead_ms: float | None = None

    def as_fields(self) -> dict[str, int | None]:
        return {"latency_ms": self.latency_ms, "stt_ms": self.stt_ms, "llm_ms": self.llm_ms, "tts_ms": self.tts_ms}


def _kind(processor: str) -> str:
    # Processor names are "<Class>#<n>": STT and TTS services say so in their class names; everything else that
    # reports a TTFB in a call is the LLM (including a realtime model).
    name = processor.split("#", 1)[0]
    if "STT" in name:
        return "stt"
    if "TTS" in name:
        return "tts"
    return "llm"


def from_breakdown(total_secs: float, breakdown: LatencyBreakdown) -> TurnLatency:
    latency = TurnLatency(latency_ms=round(total_secs * 1000))
    for ttfb in breakdown.ttfb:
        field = f"{_kind(ttfb.processor)}_ms"
        if getattr(latency, field) is None:  # the first TTFB of each kind in the cycle is the one that gated it
            setattr(latency, field, round(ttfb.duration_secs * 1000))
    if breakdown.user_turn_secs is not None and total_secs >= breakdown.user_turn_secs:
        latency.overhead_ms = (total_secs - breakdown.user_turn_secs) * 1000
    return latency


class _CallObserver(UserBotLatencyObserver):
    """pipecat's latency observer, also handing on every metric a service reports (usage, for the call's record):
    one observer, not two, because each observer costs a queue hop for every frame of the call. Its work per event
    is a few timestamps and a callback that records a metric, so the call tells it at once (`told_inline`,
    runtime/call_observer.py); the latency it reports goes on through pipecat's event handlers, each a task."""

    told_inline = True

    def __init__(self, on_metrics: Callable[[MetricsData], None] | None):
        super().__init__()
        self._on_metrics = on_metrics

    async def on_push_frame(self, data: FramePushed):
        if self._on_metrics is not None and isinstance(data.frame, MetricsFrame):
            for metrics in data.frame.data:
                self._on_metrics(metrics)
        await super().on_push_frame(data)


class TurnLatencyTracker:
    """The total comes from `on_latency_measured` (caller silent → agent speaking), not from the breakdown's
    `measured_from`: after a barge-in voxline interrupts on the caller's words, which come after the VAD stop, and
    the observer's interruption handling then forgets that the cycle started at the caller's silence (the STT's
    TTFB, reported before the interruption, is lost with it). The greeting fires no `on_latency_measured`."""

    def __init__(self, on_metrics: Callable[[MetricsData], None] | None = None):
        self.observer = _CallObserver(on_metrics)
        self._pending: TurnLatency | None = None
        self._total: float | None = None

        @self.observer.event_handler("on_latency_measured")
        async def _total(_observer, latency_secs: float):
            self._total = latency_secs

        @self.observer.event_handler("on_latency_breakdown")
        async def _measured(_observer, breakdown: LatencyBreakdown):
            total, self._total = self._total, None
            if total is None:
                return  # the greeting, timed from the connection: not a reply
            measured = self._pending = from_breakdown(total, breakdown)
            TURN_LATENCY.observe(measured.latency_ms / 1000)
            for service in ("stt", "llm", "tts"):
                if (ms := getattr(measured, f"{service}_ms")) is not None:
                    SERVICE_TTFB.labels(service=service).observe(ms / 1000)
            if measured.overhead_ms is not None:
                # The LLM's and the TTS's first byte gate the reply inside this window (the STT's came before it).
                runtime_ms = max(0.0, measured.overhead_ms - (measured.llm_ms or 0) - (measured.tts_ms or 0))
                TURN_OVERHEAD.labels(part="total").observe(measured.overhead_ms / 1000)
                TURN_OVERHEAD.labels(part="runtime").observe(runtime_ms / 1000)
                logger.debug(f"turn overhead: {measured.overhead_ms:.1f} ms from the end of turn to the first audio, "
                             f"{runtime_ms:.1f} ms without the LLM/TTS time to first byte")

    def take(self) -> TurnLatency | None:
        """The latency of the reply now being stored, once."""
        pending, self._pending = self._pending, None
        return pending
