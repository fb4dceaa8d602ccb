"""Prometheus metrics of the autoscaler: its figure per model, and every input of it."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge

from llmq.startup import at_zero

READY = Gauge("llmq_autoscaler_ready", "1 once the autoscaler watches the pools")
DESIRED = Gauge(
    "llmq_autoscaler_desired_replicas",
    "Workers each model's pool should run (KEDA scales the pool to it in a cluster)",
    ["model"],
)
NEEDED = Gauge(
    "llmq_autoscaler_needed_replicas",
    "Workers the backlog and arrivals need, before rounding, bounds and the down-scale window",
    ["model"],
)
TARGET = Gauge(
    "llmq_autoscaler_target_replicas",
    "Workers the pool would run now but for the down-scale window (below desired while the "
    "window holds it up)",
    ["model"],
)
RUNNING = Gauge("llmq_autoscaler_running_replicas", "Workers in the pool's group now", ["model"])
BACKLOG_TOKENS = Gauge(
    "llmq_autoscaler_backlog_tokens",
    "Estimated tokens of the work waiting (no worker began it): what more workers drain",
    ["model", "lane"],
)
BACKLOG_RECORDS = Gauge(
    "llmq_autoscaler_backlog_records",
    "Work records not yet done: waiting, or running on a worker (not those done behind a "
    "generation still running, whose commit it holds)",
    ["model"],
)
ARRIVALS = Gauge(
    "llmq_autoscaler_arrival_tokens_per_second", "Estimated tokens arriving a second", ["model"]
)
SERVICE = Gauge(
    "llmq_autoscaler_service_tokens_per_second",
    "Estimated tokens one worker serves a second (measured on a busy pool, else the prior)",
    ["model"],
)
DECISIONS = Counter(
    "llmq_autoscaler_changes_total", "Changes of a pool's desired size", ["model", "direction"]
)
DIRECTIONS = ("up", "down")


def changes_at_zero(models: Iterable[str]) -> None:
    """Each model's DECISIONS at 0 in both DIRECTIONS (llmq.startup.at_zero)."""
    at_zero(DECISIONS, models, DIRECTIONS)
