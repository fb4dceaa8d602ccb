"""`llmq costs --experiment NAME`: an A/B test's arms side by side, each figure with its 95%
confidence interval, from the stream processor's per-arm sums."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from schemas.names import experiment_keys
from streams.experiment_stats import LATENCY, LATENCY_EDGES_MS
from streams.rollups import SEP
from tools.costs.report import aligned
from tools.intervals import histogram_quantile, mean_interval, quantile_interval, wilson

Interval = tuple[float, float]
Bounds = tuple[float, float | None]
"""A quantile's interval: an upper end of None is unbounded (too few answers for one, or
above the histogram's last edge)."""
LEGACY = "latency_ms:"
"""The histogram's figures of an earlier version's stream processors: buckets of
LATENCY_EDGES_MS up to LEGACY_OPEN, and in bucket LEGACY_OPEN every latency above the edge
before it (891 s), however long."""
LEGACY_OPEN = 120


@dataclass(frozen=True)
class ArmReport:
    """One arm's answers and how they went; no latency where none of its answers was timed,
    no cost interval under two answers. A latency quantile of None with an interval lies
    above the histogram's last edge: more than the interval's lower end, unbounded.
    `cached_rate` is the share served without a generation of their own: from a cache or
    coalesced with another request's (the stream processors have always counted both)."""

    arm: str
    answers: int
    cost_per_request: float
    cost_interval: Interval | None
    latency_p50_ms: float | None
    latency_p50_interval: Bounds | None
    latency_p95_ms: float | None
    latency_p95_interval: Bounds | None
    error_rate: float
    error_interval: Interval
    escalation_rate: float
    escalation_interval: Interval
    cached_rate: float


async def read(client: aioredis.Redis, experiment: str) -> dict[str, dict[str, float]]:
    """Each arm's sums: answers, errors, escalated, cached, cost_usd, cost_usd_squared and
    latency:<bucket> (or LEGACY's)."""
    fields = await client.hgetall(experiment_keys(experiment, "")[0])  # type: ignore[misc]
    arms: dict[str, dict[str, float]] = defaultdict(dict)
    for name, value in fields.items():
        arm, _, figure = name.decode().partition(SEP)
        arms[arm][figure] = float(value)
    return dict(arms)


def compare(arms: dict[str, dict[str, float]]) -> list[ArmReport]:
    """The report of every arm, by name."""
    return [_report(arm, sums) for arm, sums in sorted(arms.items())]


def _report(arm: str, sums: dict[str, float]) -> ArmReport:
    n = sums.get("answers", 0.0)
    counts, edges = _latencies(sums)
    cost = sums.get("cost_usd", 0.0)
    errors, escalated = sums.get("errors", 0.0), sums.get("escalated", 0.0)
    p50, p95 = _quantile(counts, edges, 0.5), _quantile(counts, edges, 0.95)
    return ArmReport(
        arm=arm,
        answers=round(n),
        cost_per_request=cost / n if n else 0.0,
        cost_interval=_cost_interval(cost, sums.get("cost_usd_squared", 0.0), n),
        latency_p50_ms=p50 and p50[0],
        latency_p50_interval=p50 and p50[1],
        latency_p95_ms=p95 and p95[0],
        latency_p95_interval=p95 and p95[1],
        error_rate=errors / n if n else 0.0,
        error_interval=wilson(errors, n),
        escalation_rate=escalated / n if n else 0.0,
        escalation_interval=wilson(escalated, n),
        cached_rate=sums.get("cached", 0.0) / n if n else 0.0,
    )


def _cost_interval(total: float, squares: float, n: float) -> Interval | None:
    """The interval of the mean cost per request, from 0 at least: no request costs less,
    where Student's t, symmetric, reaches below 0 (few answers of very uneven cost)."""
    interval = mean_interval(total, squares, n)
    return None if interval is None else (max(0.0, interval[0]), interval[1])


def _latencies(sums: dict[str, float]) -> tuple[list[float], Sequence[float]]:
    """An arm's latency histogram: counts by bucket, the last one above the last of the
    edges returned. LEGACY counts join the buckets they share; one above 891 s may be any
    latency above, so the buckets above it are then read as one, unbounded."""
    counts = [sums.get(f"{LATENCY}{i}", 0.0) for i in range(len(LATENCY_EDGES_MS) + 1)]
    for i in range(LEGACY_OPEN):
        counts[i] += sums.get(f"{LEGACY}{i}", 0.0)
    above = sums.get(f"{LEGACY}{LEGACY_OPEN}", 0.0)
    if not above:
        return counts, LATENCY_EDGES_MS
    open_above = above + sum(counts[LEGACY_OPEN:])
    return [*counts[:LEGACY_OPEN], open_above], LATENCY_EDGES_MS[:LEGACY_OPEN]


def _quantile(
    counts: list[float], edges: Sequence[float], q: float
) -> tuple[float | None, Bounds] | None:
    """The q-quantile of a latency histogram (None above its last edge) and its interval;
    None for an empty one."""
    if not any(counts):
        return None
    return histogram_quantile(counts, edges, q), quantile_interval(counts, edges, q)


def table(reports: Sequence[ArmReport]) -> str:
    """One line per arm; intervals in brackets."""
    head = ["arm", "answers", "USD per request", "latency p50 ms", "latency p95 ms"]
    head += ["errors", "escalated", "cached or coalesced"]
    rows = [
        [
            r.arm,
            f"{r.answers:,}",
            _usd(r.cost_per_request, r.cost_interval),
            _ms(r.latency_p50_ms, r.latency_p50_interval),
            _ms(r.latency_p95_ms, r.latency_p95_interval),
            _share(r.error_rate, r.error_interval),
            _share(r.escalation_rate, r.escalation_interval),
            f"{r.cached_rate:.0%}",
        ]
        for r in reports
    ]
    rule, head_line, *lines = aligned(head, rows, right=set())
    return "\n".join([head_line, rule, *lines])


def _usd(value: float, interval: Interval | None) -> str:
    if interval is None:
        return f"{value:.3g} [-]"
    return f"{value:.3g} [{interval[0]:.3g}, {interval[1]:.3g}]"


def _ms(value: float | None, interval: Bounds | None) -> str:
    if interval is None:
        return "-"
    low = f"{interval[0]:,.0f}"
    upper = "unbounded" if interval[1] is None else f"{interval[1]:,.0f}"
    shown = f"> {low}" if value is None else f"{value:,.0f}"  # above the last edge: unbounded
    return f"{shown} [{low}, {upper}]"


def _share(value: float, interval: Interval) -> str:
    return f"{value:.1%} [{interval[0]:.1%}, {interval[1]:.1%}]"
