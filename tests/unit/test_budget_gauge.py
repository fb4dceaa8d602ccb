"""The budget gauges the alert rules read: a tenant's share spent in the current period, and
when that period ends (a quiet tenant's share stays; past its end the rules leave it out).
A late metering event of a period gone does not move them. Redis is a fake here."""

from __future__ import annotations

import asyncio
import time

from schemas.tenants import TenantLimits, period_end
from streams import metrics
from streams.budget_alerts import BudgetAlerts

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
