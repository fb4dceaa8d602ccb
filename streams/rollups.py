"""Cost rollups: every metering event summed into its UTC hour by tenant, model, lane and cache
outcome, in Redis (read by `llmq costs`) and as Prometheus counters. Rows per hour, not per
request: the sums grow with the hours, tenants and models, not with the traffic; the hour's
set of counted event ids does (about 72 bytes an event, kept the rest of its hour and
SEEN_S: some 19 MB per metering event per second)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

from llmq.pipelined import Pipelined
from schemas.metering import MeteringEvent
from schemas.names import costs_keys
from streams import metrics
from streams.tenant_labels import TenantLabels

KEEP_DAYS = 400
"""How long an hour's rollup stays: a year's reports and the same months a year before."""
SEEN_S = 3 * 86_400
"""How long an hour remembers the events it counted: longer than any redelivery takes."""
FIGURES = ("count", "prompt_tokens", "completion_tokens", "cost_usd", "saved_usd")
"""What each row sums: events (generations, or answers served without one), tokens in and
out, USD spent, USD saved (the cost of the generations that cached and coalesced answers
did not need)."""
SEP = "\t"
"""Between the parts of a row's field name; no tenant, model, lane or outcome contains it."""

# KEYS: the hour's rollup hash, its set of counted events. ARGV: the event's id, when the
# rollup and the set expire, then field and increment pairs. Returns 1 if counted, 0 if the
# event was counted before.
ADD = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('EXPIREAT', KEYS[2], ARGV[3])
for i = 4, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class Row:
    """One hour's sums for one tenant, model, lane and cache outcome."""

    hour: str
    tenant: str
    model: str
    lane: str
    cache: str
    count: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    cost_usd: float = 0.0
    saved_usd: float = 0.0


def hour_of(at: float) -> str:
    """The UTC hour that `at` falls in, as rollups name it: "2026-11-30T14"."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H")


class CostRollups:
    """Adds metering events to their hour's rollup, once each; `labels` names tenants in
    the counters (by default, the first DEFAULT_LIMIT)."""

    def __init__(self, redis: Pipelined, labels: TenantLabels | None = None) -> None:
        self._redis = redis
        self._add = redis.client.register_script(ADD)
        self._labels = TenantLabels(set()) if labels is None else labels

    async def add(self, event: MeteringEvent) -> bool:
        """Count the event in its hour (False if it was counted before). Raises RedisError:
        the caller retries, which is safe."""
        row = SEP.join([event.tenant, event.model, event.lane.value, event.cache.value])
        sums = {
            "count": 1,
            "prompt_tokens": event.prompt_tokens,
            "completion_tokens": event.completion_tokens,
            "cost_usd": event.cost_usd,
            "saved_usd": event.saved_usd,
        }
        hour_end = int(event.at // 3600 * 3600 + 3600)
        pairs = [x for figure, value in sums.items() if value for x in (row + SEP + figure, value)]
        keys = list(costs_keys(hour_of(event.at)))
        args = [
            event.event_id,
            hour_end + KEEP_DAYS * 86_400,
            max(hour_end, int(time.time())) + SEEN_S,
            *pairs,
        ]
        added = await self._redis.script(self._add, keys, args)
        if added:
            _export(event, self._labels.label(event.tenant))
        return bool(added)


def _export(event: MeteringEvent, tenant: str) -> None:
    """The same sums as Prometheus counters (per process: sum them across instances), the
    tenant as `tenant` labels it (TenantLabels: the rollups keep every tenant)."""
    labels = (tenant, event.model, event.lane.value, event.cache.value)
    metrics.COSTS_EVENTS.labels(*labels).inc()
    metrics.COSTS_USD.labels(*labels).inc(event.cost_usd)
    metrics.COSTS_SAVED_USD.labels(*labels).inc(event.saved_usd)
    metrics.COSTS_TOKENS.labels(tenant, event.model, "prompt").inc(event.prompt_tokens)
    metrics.COSTS_TOKENS.labels(tenant, event.model, "completion").inc(event.completion_tokens)


async def read(client: aioredis.Redis, hours: list[str]) -> list[Row]:
    """Every row of these hours (missing hours have none)."""
    pipe = client.pipeline(transaction=False)
    for hour in hours:
        pipe.hgetall(costs_keys(hour)[0])
    rows = []
    for hour, fields in zip(hours, await pipe.execute(), strict=True):
        sums: dict[tuple[str, str, str, str], dict[str, float]] = {}
        for name, value in fields.items():
            parts = name.decode().split(SEP)
            if len(parts) == 5 and parts[4] in FIGURES:
                tenant, model, lane, cache, figure = parts
                sums.setdefault((tenant, model, lane, cache), {})[figure] = float(value)
        rows += [
            Row(hour, tenant, model, lane, cache, **figures)
            for (tenant, model, lane, cache), figures in sums.items()
        ]
    return rows
