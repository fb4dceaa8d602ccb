"""A/B test statistics: every answer of a request in an experiment, summed per arm in Redis
(answers, errors, escalations, cost and its square, a latency histogram), so that `llmq
costs --experiment` can compare arms with confidence intervals."""

from __future__ import annotations

import logging
import math
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.names import experiment_answer, experiment_keys
from schemas.result import InferenceResult
from streams.rollups import ADD, KEEP_DAYS, SEEN_S, SEP, hour_of

log = logging.getLogger(__name__)

LATENCY_EDGES_MS = tuple(round(10 ** (i / 20), 3) for i in range(161))
"""Upper edges of the latency histogram's buckets: 1 ms to 10^8 ms (27.8 hours, past the
Batch API's 24-hour window), 20 a decade (12% apart), so a quantile read from it is off by at
most one bucket's width. One bucket more, len(LATENCY_EDGES_MS), holds every latency above
the last edge: a quantile there has no upper bound."""
LATENCY = "latency:"
"""The histogram's figures: "latency:<bucket>" (an earlier version's "latency_ms:<bucket>",
whose buckets stopped at 1,000 s: tools/costs/experiment.py reads them too)."""


def latency_bucket(ms: float) -> int:
    """The histogram bucket of a latency: the first whose upper edge is at or above it, or
    the one above the last edge."""
    if ms <= LATENCY_EDGES_MS[0]:
        return 0
    return min(len(LATENCY_EDGES_MS), math.ceil(20 * math.log10(ms) - 1e-9))


class ExperimentStats:
    """Counts each answered request of an experiment once, in its arm."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._add = client.register_script(ADD)  # the rollups' script: count an id once

    async def answered(self, result: InferenceResult) -> None:
        """Count the result if its request took part in an experiment. Best effort: with
        Redis failing, the answer goes out uncounted (and a warning says so)."""
        route = result.route
        if route is None or route.experiment is None or route.arm is None:
            return
        cost = result.cost_usd or 0.0
        sums = {
            "answers": 1.0,
            "errors": float(result.status == "error"),
            "escalated": float(route.escalated),
            "cached": float(result.cache.value != "none"),
            "cost_usd": cost,
            "cost_usd_squared": cost * cost,
        }
        total_ms = result.timings.total_ms
        if total_ms is not None:
            sums[f"{LATENCY}{latency_bucket(total_ms)}"] = 1.0
        pairs = [
            x for name, value in sums.items() if value for x in (route.arm + SEP + name, value)
        ]
        hour = hour_of(result.asked_at)  # every answer to the request counts in one hour
        try:
            await self._count(route.experiment, hour, result, pairs)
        except RedisError as exc:
            log.warning("experiment %s: an answer went uncounted: %r", route.experiment, exc)

    async def _count(
        self, experiment: str, hour: str, result: InferenceResult, pairs: list[str | float]
    ) -> None:
        await self._add(
            keys=list(experiment_keys(experiment, hour)),
            args=[
                experiment_answer(result.tenant or "", result.correlation_id or ""),
                int(result.finished_at) + KEEP_DAYS * 86_400,
                # From now, not from the answer: an old one's set would expire at once.
                max(int(result.finished_at), int(time.time())) + SEEN_S,
                *pairs,
            ],
        )
