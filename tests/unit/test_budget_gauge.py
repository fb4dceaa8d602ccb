"""The budget gauges the alert rules read: a tenant's share spent in the current period, and
when that period ends (a quiet tenant's share stays; past its end the rules leave it out).
A late metering event of a period gone does not move them; a tenant past the metrics' bound
(streams/tenant_labels.py) has none. Redis is a fake here."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from schemas.tenants import TenantLimits, period_end
from streams import metrics
from streams.budget_alerts import BudgetAlerts
from streams.tenant_labels import OTHER, TenantLabels

DAY = 86_400.0
LIMITS = TenantLimits(budget_usd=10.0)


class AlreadySent:
    """Redis where every alert was sent already (SET NX answers no)."""

    async def set(self, *args: object, **kwargs: object) -> bool:
        return False


async def _nothing(*args: object) -> None:
    raise AssertionError("no alert is sent again")


def _gauges(tenant: str) -> tuple[float, float]:
    used = metrics.BUDGET_USED.labels(tenant)._value.get()
    end = metrics.BUDGET_PERIOD_END.labels(tenant)._value.get()
    return used, end


def test_the_gauges_follow_the_current_period_and_say_when_it_ends() -> None:
    now = time.time()
    alerts = BudgetAlerts(AlreadySent(), _nothing)  # type: ignore[arg-type]
    asyncio.run(alerts.spent("gauged", LIMITS, 2.0, now))
    assert _gauges("gauged") == (0.2, period_end("day", now))
    asyncio.run(alerts.exhausted("gauged", LIMITS, 9.5, now))
    assert _gauges("gauged") == (1.0, period_end("day", now))


def test_a_late_event_of_a_period_gone_leaves_the_gauges_alone() -> None:
    now = time.time()
    alerts = BudgetAlerts(AlreadySent(), _nothing)  # type: ignore[arg-type]
    asyncio.run(alerts.spent("late", LIMITS, 1.0, now))
    asyncio.run(alerts.spent("late", LIMITS, 9.0, now - DAY))  # yesterday's, counted now
    assert _gauges("late") == (0.1, period_end("day", now))


def _used(tenant: str) -> float | None:
    return REGISTRY.get_sample_value("llmq_budget_used_ratio", {"tenant": tenant})


def test_a_tenant_past_the_limit_has_no_budget_gauge() -> None:
    labels = TenantLabels({"fix59-budgeted"}, 1)
    alerts = BudgetAlerts(AlreadySent(), _nothing, labels)  # type: ignore[arg-type]
    now = time.time()
    other = _used(OTHER)  # a tenant named "other" has its own (test below)
    asyncio.run(alerts.spent("fix59-a", LIMITS, 2.0, now))
    asyncio.run(alerts.spent("fix59-b", LIMITS, 3.0, now))
    alerts.admitted("fix59-c", LIMITS, 4.0)
    asyncio.run(alerts.exhausted("fix59-budgeted", LIMITS, 9.0, now))
    assert _used("fix59-a") == 0.2
    assert _used("fix59-budgeted") == 1.0
    assert _used("fix59-b") is _used("fix59-c") is None
    assert _used(OTHER) == other


def test_a_tenant_named_other_has_its_budget_gauge() -> None:
    alerts = BudgetAlerts(AlreadySent(), _nothing, TenantLabels({OTHER}, 0))  # type: ignore[arg-type]
    alerts.admitted(OTHER, LIMITS, 4.0)
    assert _used(OTHER) == 0.4
