"""Budget alerts: a tenant crossing 50, 80 and 100% of its budget is reported once per
threshold and period, as a log line, a metric and a BudgetAlert on llmq.alerts."""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis

from llmq.startup import at_zero
from llmq.throttle import apart
from schemas.alerts import BudgetAlert
from schemas.names import ALERTS, spend_key
from schemas.tenants import TenantLimits, period_end, period_id
from streams import metrics
from streams.budget import KEEP_AFTER_PERIOD_S
from streams.outbox import Send
from streams.tenant_labels import OTHER, TenantLabels

log = logging.getLogger(__name__)

THRESHOLDS = (0.5, 0.8, 1.0)
"""Shares of a budget that are reported when crossed."""
KNOWN_MAX = 100_000
"""Alerts remembered as sent, per process (each key names its period, so old ones only cost
memory; past this many they are forgotten and Redis answers again)."""


class BudgetAlerts:
    """Decides which thresholds a tenant's spend crossed and reports each once: a Redis key
    per tenant, period and threshold (SET NX) makes one instance of the stream processor the
    one that reports it, however many count spend. `labels` names tenants in the metrics (by
    default, the first DEFAULT_LIMIT)."""

    def __init__(
        self, redis: aioredis.Redis, send: Send, labels: TenantLabels | None = None
    ) -> None:
        self._redis = redis
        self._send = send
        self._labels = TenantLabels(set()) if labels is None else labels
        self._known: set[str] = set()
        """Keys of alerts known to be sent: no Redis call for them on every later count."""
        self._labelled: set[str] = set()
        """Label values whose alert counters are made (at most the labels' bound, and OTHER)."""

    def admitted(self, tenant: str, limits: TenantLimits, spent: float | None) -> None:
        """Admission read the tenant's spend: the gauge follows it, into a new period too."""
        if spent is not None and limits.budget_usd:
            self._gauge(tenant, limits, spent / limits.budget_usd, time.time())

    async def spent(self, tenant: str, limits: TenantLimits, spent: float, now: float) -> None:
        """The tenant's spend in the current period is now `spent`. Raises RedisError or the
        producer's errors; the caller decides whether that matters."""
        budget = limits.budget_usd
        if not budget:
            return
        period = limits.budget_period
        if period_id(period, now) == period_id(period, time.time()):  # not a late event's
            self._gauge(tenant, limits, spent / budget, now)
        for threshold in THRESHOLDS:
            if spent >= threshold * budget:
                await self._once(tenant, limits, threshold, spent=spent, now=now, reason="spend")

    async def exhausted(self, tenant: str, limits: TenantLimits, spent: float, now: float) -> None:
        """A request was refused because what is left of the budget cannot pay for it: for
        the tenant, the budget is used up, though the spend stays below it."""
        if not limits.budget_usd:
            return
        self._gauge(tenant, limits, 1.0, now)
        reason = "a request was refused: what is left cannot pay for its worst case"
        await self._once(tenant, limits, 1.0, spent=spent, now=now, reason=reason)

    async def _once(
        self,
        tenant: str,
        limits: TenantLimits,
        threshold: float,
        *,
        spent: float,
        now: float,
        reason: str,
    ) -> None:
        assert limits.budget_usd is not None
        period = limits.budget_period
        window = period_id(period, now)
        # The budget is in the key: one raised mid-period has its thresholds reported too.
        budget = f"{limits.budget_usd:g}"
        key = spend_key(tenant, f"alerted:{window}:{budget}:{round(threshold * 100)}")
        expires = int(period_end(period, now)) + KEEP_AFTER_PERIOD_S
        if key in self._known:
            return
        if len(self._known) > KNOWN_MAX:
            self._known.clear()
        if not await self._redis.set(key, reason, nx=True, exat=expires):
            self._known.add(key)
            return
        alert = BudgetAlert(
            tenant=tenant,
            threshold=threshold,
            period=period,
            period_id=window,
            spent_usd=spent,
            budget_usd=limits.budget_usd,
            reason=reason,
            at=now,
        )
        log.warning(
            "tenant %s crossed %d%% of its budget for %s (spent $%.6g of $%.6g): %s",
            tenant,
            round(threshold * 100),
            window,
            spent,
            limits.budget_usd,
            reason,
            extra=apart(tenant, threshold, window),
        )
        try:
            await self._send(ALERTS, tenant.encode(), alert.model_dump_json().encode())
        except BaseException:
            await self._redis.delete(key)  # not sent: the next count tries again
            raise
        self._known.add(key)
        metrics.BUDGET_ALERTS.labels(self._label(tenant), _threshold(threshold)).inc()

    def _label(self, tenant: str) -> str:
        """The tenant's label value; the first time, its alert counters at 0 for every
        threshold: a child made at its first inc() starts at 1, which rate() and increase()
        take for no rise."""
        label = self._labels.label(tenant)
        if label not in self._labelled:
            self._labelled.add(label)
            at_zero(metrics.BUDGET_ALERTS, [label], map(_threshold, THRESHOLDS))
        return label

    def _gauge(self, tenant: str, limits: TenantLimits, ratio: float, now: float) -> None:
        """The tenant's share of its budget spent in the period of `now`, and when that ends:
        a quiet tenant's ratio stays as it was, and the alert rules see its period gone."""
        label = self._label(tenant)
        if label == OTHER != tenant:  # one ratio for a mixed bucket of tenants means nothing
            return
        metrics.BUDGET_USED.labels(label).set(ratio)
        metrics.BUDGET_PERIOD_END.labels(label).set(period_end(limits.budget_period, now))


def _threshold(threshold: float) -> str:
    """The `threshold` label value: 0.5, 0.8, 1."""
    return f"{threshold:g}"
