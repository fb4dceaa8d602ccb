"""Per-tenant budgets: USD spent per UTC day and month, fed by metering, checked at admission."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.errors import ErrorCode, LlmqError
from schemas.metering import MeteringEvent
from schemas.names import spend_key
from schemas.tenants import BudgetPeriod, TenantLimits, period_end, period_id
from streams.ratelimit import CHECK_TIMEOUT_S

log = logging.getLogger(__name__)

KEEP_AFTER_PERIOD_S = 2 * 86_400
"""Spend stays readable this long after its period ends (yesterday's figure, for reports)."""

# KEYS: the day's spend, the month's spend, the set of events counted on that day.
# ARGV: the event's id, its cost, when the day's and the month's keys expire (Unix time).
# The set makes a redelivered event count once; it lives as long as the month's spend,
# so no duplicate can reach a figure that a budget check still reads.
ADD_ONCE = """
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then
  return 0
end
redis.call('EXPIREAT', KEYS[3], ARGV[4])
redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
redis.call('INCRBYFLOAT', KEYS[2], ARGV[2])
redis.call('EXPIREAT', KEYS[2], ARGV[4])
return 1
"""

PERIOD_NAMES: dict[BudgetPeriod, str] = {"day": "daily", "month": "monthly"}


class Budgets:
    """Every metered generation adds its cost to its tenant's day and month; admission
    refuses a tenant whose spend has reached its budget until the period resets.

    Spend lags by the requests in flight, so a budget is a soft limit: it may be overshot
    by what was admitted before the spend that crossed it was metered."""

    def __init__(self, client: aioredis.Redis, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self._redis = client
        self._add_once = client.register_script(ADD_ONCE)
        self._timeout_s = timeout_s

    async def record(self, event: MeteringEvent) -> bool:
        """Add the event's cost to its tenant's spend, once however often it is delivered.

        Returns False for an event already counted, a free one, or one whose month is too
        old to matter. Raises RedisError: the caller must retry and not commit the metering
        record until this succeeds (retrying is safe, the event is counted once)."""
        month_end = period_end("month", event.at) + KEEP_AFTER_PERIOD_S
        if event.cost_usd == 0 or month_end <= time.time():
            return False
        added = await self._add_once(
            keys=[
                spend_key(event.tenant, period_id("day", event.at)),
                spend_key(event.tenant, period_id("month", event.at)),
                spend_key(event.tenant, "seen:" + period_id("day", event.at)),
            ],
            args=[
                _event_id(event),
                repr(event.cost_usd),
                int(period_end("day", event.at)) + KEEP_AFTER_PERIOD_S,
                int(month_end),
            ],
        )
        return bool(added)

    async def check(self, tenant: str, limits: TenantLimits, now: float | None = None) -> None:
        """Raise BUDGET_EXCEEDED, with the seconds until the reset, once the tenant's spend in
        the current period has reached its budget. With Redis unavailable or slower than
        `timeout_s` it admits (and logs a warning), as the rate limiter does."""
        if limits.budget_usd is None:
            return
        now = time.time() if now is None else now
        try:
            async with asyncio.timeout(self._timeout_s):
                spent = await self.spent(tenant, limits.budget_period, now)
        except (RedisError, TimeoutError) as exc:
            log.warning("budgets unavailable, admitting tenant %s unchecked: %s", tenant, exc)
            return
        if spent < limits.budget_usd:
            return
        resets = period_end(limits.budget_period, now)
        at = datetime.fromtimestamp(resets, UTC).strftime("%Y-%m-%d %H:%M UTC")
        raise LlmqError(
            ErrorCode.BUDGET_EXCEEDED,
            f"tenant {tenant} has spent {_usd(spent)} of its {_usd(limits.budget_usd)} "
            f"{PERIOD_NAMES[limits.budget_period]} budget; it resets at {at}",
            retry_after_s=resets - now,
        )

    async def spent(self, tenant: str, period: BudgetPeriod, at: float | None = None) -> float:
        """USD the tenant spent in the day or month that contains `at` (default: now)."""
        at = time.time() if at is None else at
        raw = await self._redis.get(spend_key(tenant, period_id(period, at)))
        return 0.0 if raw is None else float(raw)


def _event_id(event: MeteringEvent) -> str:
    """What identifies one generation's event across redeliveries (a retried generation is
    a new event: it has its own `at`, and it did cost again)."""
    key = f"{event.correlation_id}\0{event.fingerprint}\0{event.at!r}"
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


def _usd(amount: float) -> str:
    """Dollars as a person reads them: cents for real money, significant digits below $1."""
    return f"${amount:,.2f}" if amount >= 1 or amount == 0 else f"${amount:.3g}"
