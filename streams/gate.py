"""Per-tenant admission control: rate limits at the door, budgets held from admission to the
answer and settled by metering."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence

from redis.exceptions import RedisError

from schemas.catalog import Catalog
from schemas.errors import LlmqError
from schemas.metering import MeteringEvent
from schemas.result import InferenceResult
from schemas.tenants import BudgetPeriod, TenantPolicy
from schemas.work import WorkItem
from streams import metrics
from streams.budget import HOLD_S, BudgetExceededError, Budgets, worst_case
from streams.budget_alerts import BudgetAlerts
from streams.ratelimit import CHECK_TIMEOUT_S, RateLimiter

log = logging.getLogger(__name__)

ALERT_TIMEOUT_S = 10.0
"""How long reporting one budget alert (Redis, then Kafka) may take before it is given up."""


class TenantGate:
    """The Gate of admission (the tenant's budget, then its rate limits) and the Ledger that
    settles and releases the budget holds it takes."""

    def __init__(
        self,
        policy: TenantPolicy,
        limiter: RateLimiter,
        budgets: Budgets,
        catalog: Catalog,
        alerts: BudgetAlerts | None = None,
    ) -> None:
        self._policy = policy
        self._limiter = limiter
        self._budgets = budgets
        self._catalog = catalog
        self._alerts = alerts
        self._uncounted: dict[tuple[str, str], dict[str, MeteringEvent]] = {}
        """Generations whose settling failed, by tenant and hold, then by event id (an event
        redelivered is one), for their answer's release to settle again (or keep their cost
        held)."""

    async def check(self, work: WorkItem) -> WorkItem:
        """Raise RATE_LIMITED or BUDGET_EXCEEDED (with retry_after_s) when it must wait; an
        admitted request holds its worst-case cost until it is answered; the choices of a call
        of several (`choice_of`) pass the rate limits together (RateLimiter.check). Returns the
        work to send on: a request of a tenant with a budget that names no deadline gets one, its
        hold's life (budget.HOLD_S), so that it is not generated after its hold lapsed (the
        budget would have admitted others into that room)."""
        request = work.request
        limits = self._policy.limits(request.tenant)
        if limits.budget_usd is not None and request.deadline is None:
            request = request.model_copy(update={"deadline": time.time() + HOLD_S})
            work = work.model_copy(update={"request": request})
        hold = worst_case(work, self._catalog)
        try:
            reserved = await self._budgets.reserve(request.tenant, limits, hold)
        except BudgetExceededError as refused:
            if refused.exhausted and self._alerts is not None:
                alerts = self._alerts
                await _reported(
                    alerts.exhausted(request.tenant, limits, refused.spent, time.time())
                )
            raise
        if self._alerts is not None:
            self._alerts.admitted(
                request.tenant, limits, None if reserved is None else reserved.spent
            )
        try:
            await self._limiter.check(
                request.tenant,
                limits,
                request.body.estimated_tokens(),
                request_id=request.correlation_id,
                fingerprint=work.fingerprint,
                call=request.choice_of,
            )
        except LlmqError:
            # Only a hold placed now: one an earlier record of this id placed is its request's,
            # which may be in flight (the same id sent again must not free it).
            if reserved is not None and reserved.placed:
                await self._release(request.tenant, hold.id)
            raise
        return work

    async def settle(self, event: MeteringEvent | None) -> None:
        """Count a generation's cost as it completes, before its request is answered (and
        its hold released). One try: if Redis fails, llmq.metering counts it later, and the
        release tries again first."""
        if event is None or await self._settled(event):
            return
        if self._policy.limits(event.tenant).budget_usd is not None:
            self._forget_lapsed(time.time())
            uncounted = self._uncounted.setdefault((event.tenant, event.correlation_id), {})
            uncounted[event.event_id] = event

    def _forget_lapsed(self, now: float) -> None:
        """Forget the uncounted costs of holds lapsed by now (HOLD_S, the longest a hold
        lives): their request was answered elsewhere (its partition moved), and
        llmq.metering has counted them."""
        lapsed = [
            key
            for key, events in self._uncounted.items()
            if all(now - event.at > HOLD_S for event in events.values())
        ]
        for key in lapsed:
            del self._uncounted[key]

    async def _settled(self, event: MeteringEvent) -> bool:
        """One try at counting the event; False if Redis failed."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                spent = await self._budgets.settle(event)
        except (RedisError, TimeoutError) as exc:
            log.warning("cannot settle %s's spend now (metering will): %r", event.tenant, exc)
            return False
        if spent is not None:
            await self._counted(event, spent)
        return True

    async def release(self, result: InferenceResult) -> None:
        """The request is answered: what is left of its hold goes back to the budget, but
        costs not counted yet (llmq.metering takes them from the hold when it counts them:
        released now, the budget would admit into room they spend)."""
        tenant, hold_id = result.tenant, result.correlation_id
        if not tenant or not hold_id or self._policy.limits(tenant).budget_usd is None:
            return
        uncounted = self._uncounted.pop((tenant, hold_id), {}).values()
        kept = [event.cost_usd for event in uncounted if not await self._settled(event)]
        await self._release(tenant, hold_id, kept)

    async def _release(self, tenant: str, hold_id: str, kept: Sequence[float] = ()) -> None:
        """One try: a hold that stays expires by itself (budget.HOLD_S)."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._budgets.release(tenant, hold_id, kept)
        except (RedisError, TimeoutError) as exc:
            log.warning("cannot release %s's hold of %s: %r", tenant, hold_id, exc)

    async def count(self, event: MeteringEvent) -> None:
        """Count one metering event towards its tenant's budget, once however often it
        comes, and report the thresholds it crossed. Raises RedisError (retrying is safe)."""
        spent = await self._budgets.settle(event)
        if spent is not None:
            await self._counted(event, spent)

    async def _counted(self, event: MeteringEvent, spent: dict[BudgetPeriod, float]) -> None:
        """A cost just counted, bringing the spend to `spent`: the metric, and the tenant's
        budget alerts."""
        metrics.SPEND.inc(event.cost_usd)
        limits = self._policy.limits(event.tenant)
        if self._alerts is not None and limits.budget_usd is not None:
            period = limits.budget_period
            await _reported(self._alerts.spent(event.tenant, limits, spent[period], event.at))


async def _reported(alerting: Awaitable[None]) -> None:
    """Alerts are reported on a best-effort basis: a failure is logged, and the request or
    metering event that triggered it goes on (the alert comes with the next one)."""
    try:
        async with asyncio.timeout(ALERT_TIMEOUT_S):
            await alerting
    except Exception as exc:
        log.warning("cannot report a budget alert now: %r", exc)
