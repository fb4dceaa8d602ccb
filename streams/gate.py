"""Per-tenant admission control: rate limits at the door, budgets held from admission to the
answer and settled by metering."""

from __future__ import annotations

import asyncio
import itertools
import logging

from pydantic import ValidationError
from redis.exceptions import RedisError

from schemas.catalog import Catalog
from schemas.errors import LlmqError
from schemas.metering import MeteringEvent
from schemas.redact import describe
from schemas.result import InferenceResult
from schemas.retry import RetryPolicy
from schemas.tenants import TenantPolicy
from schemas.work import WorkItem
from streams import metrics
from streams.budget import Budgets, worst_case
from streams.ratelimit import CHECK_TIMEOUT_S, RateLimiter

log = logging.getLogger(__name__)

METERING_RETRY = RetryPolicy(base_delay_s=0.1, max_delay_s=5.0)
"""Backoff between tries to count a metering event while Redis fails (tried until it works)."""


class TenantGate:
    """The Gate of admission (the tenant's budget, then its rate limits) and the Ledger that
    settles and releases the budget holds it takes."""

    def __init__(
        self, policy: TenantPolicy, limiter: RateLimiter, budgets: Budgets, catalog: Catalog
    ) -> None:
        self._policy = policy
        self._limiter = limiter
        self._budgets = budgets
        self._catalog = catalog

    async def check(self, work: WorkItem) -> None:
        """Raise RATE_LIMITED or BUDGET_EXCEEDED (with retry_after_s) when it must wait; an
        admitted request holds its worst-case cost until it is answered."""
        request = work.request
        limits = self._policy.limits(request.tenant)
        hold = worst_case(work, self._catalog)
        await self._budgets.reserve(request.tenant, limits, hold)
        try:
            await self._limiter.check(request.tenant, limits, request.body.estimated_tokens())
        except LlmqError:
            await self._release(request.tenant, hold.id)
            raise

    async def settle(self, event: MeteringEvent | None) -> None:
        """Count a generation's cost as it completes, before its request is answered (and
        its hold released). One try: if Redis fails, llmq.metering counts it later."""
        if event is None:
            return
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                if await self._budgets.record(event):
                    metrics.SPEND.inc(event.cost_usd)
        except (RedisError, TimeoutError) as exc:
            log.warning("cannot settle %s's spend now (metering will): %r", event.tenant, exc)

    async def release(self, result: InferenceResult) -> None:
        """The request is answered: what is left of its hold goes back to the budget."""
        tenant, hold_id = result.tenant, result.correlation_id
        if tenant and hold_id and self._policy.limits(tenant).budget_usd is not None:
            await self._release(tenant, hold_id)

    async def _release(self, tenant: str, hold_id: str) -> None:
        """One try: a hold that stays expires by itself (budget.HOLD_S)."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._budgets.release(tenant, hold_id)
        except (RedisError, TimeoutError) as exc:
            log.warning("cannot release %s's hold of %s: %r", tenant, hold_id, exc)

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
