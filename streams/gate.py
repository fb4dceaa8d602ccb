"""Per-tenant admission control: rate limits at the door, budgets fed by metering."""

from __future__ import annotations

import asyncio
import itertools
import logging

from pydantic import ValidationError
from redis.exceptions import RedisError

from schemas.metering import MeteringEvent
from schemas.redact import describe
from schemas.request import InferenceRequest
from schemas.retry import RetryPolicy
from schemas.tenants import TenantPolicy
from streams import metrics
from streams.budget import Budgets
from streams.ratelimit import RateLimiter

log = logging.getLogger(__name__)

METERING_RETRY = RetryPolicy(base_delay_s=0.1, max_delay_s=5.0)
"""Backoff between tries to count a metering event while Redis fails (tried until it works)."""


class TenantGate:
    """The Gate of admission: the tenant's rate limits, then its budget."""

    def __init__(self, policy: TenantPolicy, limiter: RateLimiter, budgets: Budgets) -> None:
        self._policy = policy
        self._limiter = limiter
        self._budgets = budgets

    async def check(self, request: InferenceRequest) -> None:
        """Raise RATE_LIMITED or BUDGET_EXCEEDED (with retry_after_s) when it must wait."""
        limits = self._policy.limits(request.tenant)
        await self._budgets.check(request.tenant, limits)
        await self._limiter.check(request.tenant, limits, request.body.estimated_tokens())

    async def on_metering(self, value: bytes | None) -> None:
        """Count one metering event towards its tenant's budget.

        Redis errors are retried (with a capped backoff) until they pass: the record's
        offset is committed only after it, so spend is neither lost nor counted twice.
        """
        try:
            event = MeteringEvent.model_validate_json(value or b"")
        except ValidationError as exc:
            log.warning("skipping an unreadable metering event: %s", describe(exc))
            return
        for attempt in itertools.count(1):
            try:
                if await self._budgets.record(event):
                    metrics.SPEND.inc(event.cost_usd)
                return
            except RedisError as exc:
                delay = METERING_RETRY.backoff(attempt)
                log.warning("cannot record spend (retrying in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
