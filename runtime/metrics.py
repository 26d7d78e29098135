"""Prometheus metrics for `GET /metrics` (prometheus-client). Counters are this server's; with several servers,
scrape each (their sum is the fleet's). The workers of one `voxline serve --workers N` are one server: the parent
sets PROMETHEUS_MULTIPROC_DIR, every worker's values go to files there, and any worker's `/metrics` sums them all
(prometheus-client's multiprocess mode)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REGISTRY = CollectorRegistry(auto_describe=True)

ACTIVE_CALLS = Gauge("voxline_active_calls", "Calls with a live media stream on this server", registry=REGISTRY,
                     multiprocess_mode="livesum")
CALLS_ENDED = Counter("voxline_calls_ended", "Calls closed by this server, by outcome",
                      ["status", "reason"], registry=REGISTRY)
TURN_LATENCY = Histogram(
    "voxline_turn_latency_seconds", "Caller stopped speaking → first agent audio sent, per answered turn",
    registry=REGISTRY, buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0))
# Fine buckets: the load benchmark (bench/load.py) reads its percentiles from this histogram.
OVERHEAD_BUCKETS = (0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05,
                    0.06, 0.07, 0.08, 0.09, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0,
                    3.0, 5.0)
TURN_OVERHEAD = Histogram(
    "voxline_turn_overhead_seconds", "End-of-turn decision (the user turn released to the LLM) → first agent audio "
    "sent, per answered turn: part=total, and part=runtime with the LLM's and TTS's time to first byte taken out",
    ["part"], registry=REGISTRY, buckets=OVERHEAD_BUCKETS)
SERVICE_TTFB = Histogram(
    "voxline_service_ttfb_seconds", "Time to first byte of each service within an answered turn",
    ["service"], registry=REGISTRY, buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0))
BARGE_IN = Histogram(
    "voxline_barge_in_decision_seconds", "Caller's voice over the agent (agent held at once) → the verdict on "
    "their words: interrupt, acknowledge (agent resumes) or resume (no words)",
    ["verdict"], registry=REGISTRY, buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0))
PROVIDER_ERRORS = Counter("voxline_provider_errors", "Provider failures during calls, by reason",
                          ["reason"], registry=REGISTRY)
CALLS_REFUSED = Counter("voxline_calls_refused", "New calls this server turned away (runtime/capacity.py), by the "
                        "limit that refused them: max_calls or loop_lag", ["limit"], registry=REGISTRY)
CALLS_STARTING = Gauge("voxline_calls_starting", "Calls let in (webhook answered, outbound placed) whose media "
                       "stream has not started yet", registry=REGISTRY, multiprocess_mode="livesum")
LOOP_LAG = Gauge("voxline_event_loop_lag_seconds", "How late the event loop runs its timers, mean over the last 3 s "
                 "(the busiest worker's)", registry=REGISTRY, multiprocess_mode="livemax")
WEBHOOK_DELIVERIES = Counter("voxline_webhook_delivery_attempts", "Webhook delivery attempts, by result "
                             "(delivered, retrying, failed)", ["result"], registry=REGISTRY)


def exposition() -> bytes:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def forget_dead_workers() -> None:
    """A worker that died leaves its live gauge behind (calls it no longer has): drop those of dead processes."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return
    import glob

    from prometheus_client import multiprocess

    for f in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        pid = int(f.rsplit("_", 1)[1].split(".")[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid)
        except PermissionError:
            pass  # alive, someone else's
