"""The costs a budget's settling could not count (Redis away) wait for their request's
release; one whose release runs at another instance (its partition moved) is forgotten once
its hold has lapsed, not kept for the life of the process. Redis is a fake here."""

from __future__ import annotations

import asyncio
import time
from typing import cast

from redis.exceptions import ConnectionError as RedisConnectionError

from schemas.catalog import Catalog
from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.tenants import TenantLimits, TenantPolicy
from streams.budget import HOLD_S, Budgets
from streams.gate import TenantGate
from streams.ratelimit import RateLimiter


class Away:
    """Budgets whose Redis is away."""

    async def settle(self, event: MeteringEvent) -> None:
        raise RedisConnectionError("redis away")


def _event(correlation_id: str, at: float) -> MeteringEvent:
    return MeteringEvent(
        correlation_id=correlation_id,
        tenant="acme",
        model="m",
        lane=Lane.STANDARD,
        fingerprint="f",
        prompt_tokens=1,
        completion_tokens=1,
        cost_usd=0.01,
        queue_ms=0.0,
        ttft_ms=None,
        engine_ms=1.0,
        worker="w",
        at=at,
    )


def test_uncounted_costs_of_lapsed_holds_are_forgotten() -> None:
    policy = TenantPolicy(default=TenantLimits(budget_usd=10.0))
    gate = TenantGate(policy, cast(RateLimiter, None), cast(Budgets, Away()), Catalog.builtin())
    now = time.time()
    asyncio.run(gate.settle(_event("moved", now - HOLD_S - 1)))
    asyncio.run(gate.settle(_event("recent", now - 60)))
    asyncio.run(gate.settle(_event("now", now)))
    assert sorted(cid for _, cid in gate._uncounted) == ["now", "recent"]
