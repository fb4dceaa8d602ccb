"""Per-tenant budgets that hold: admission reserves each request's worst-case cost, metering
turns the reserve into spend, and the answer releases what is left (docs/budgets.md)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.metering import MeteringEvent
from schemas.names import spend_key
from schemas.tenants import (
    NANO,
    BudgetPeriod,
    TenantLimits,
    period_end,
    period_id,
    usd,
    worst_cost,
)
from schemas.work import WorkItem
from streams.ratelimit import CHECK_TIMEOUT_S

log = logging.getLogger(__name__)

KEEP_AFTER_PERIOD_S = 2 * 86_400
"""Spend stays readable this long after its period ends (yesterday's figure, for reports)."""
HOLD_S = 6 * 3600
"""How long a hold of a request without a deadline lasts if its answer never releases it (a
release lost to a Redis outage): long enough for a backlog, short enough to heal."""
HOLD_AFTER_DEADLINE_S = 600
"""A request with a deadline holds until then plus this: the generation may finish a little
after the deadline it was admitted under."""
RETRY_WHILE_HELD_S = 5.0
"""What a request refused only because requests in flight hold the rest is told to wait."""
EXHAUSTED = 0.8
"""Past this share of its budget, a tenant whose request cannot fit what is left counts as
having used its budget up (its spend may never reach the budget exactly: holds stop it
short); below it, a request too large for what is left is that request's problem."""

# KEYS: the spend of the budget's current period, the holds {id: nano-USD}, the holds by
# expiry (a sorted set), the sum of the holds (nano-USD).
# ARGV: the hold's id, its nano-USD, the budget (USD), now, the hold's expiry, and when the
# hold keys may expire (Unix times).
# Expired holds are dropped first, and a sum without holds is 0: the holds' keys may expire
# before the sum's (each expiry is only raised, and the sum's key outlives an empty hash),
# and a sum that kept a lapsed hold would shrink the room for good. A hold already taken (a
# redelivered request) is admitted again, as 2. Returns {admitted 0/1/2, spent USD, held
# nano-USD} (strings: Lua numbers become integers in replies).
RESERVE = """
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[4], 'LIMIT', 0, 1000)) do
  local amount = redis.call('HGET', KEYS[2], id)
  if amount then
    redis.call('DECRBY', KEYS[4], amount)
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[3], id)
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[4])
end
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = tonumber(redis.call('GET', KEYS[4]) or '0')
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return {2, tostring(spent), tostring(held)}
end
local budget, amount = tonumber(ARGV[3]), tonumber(ARGV[2])
if spent >= budget or spent + (held + amount) / 1e9 > budget then
  return {0, tostring(spent), tostring(held)}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('INCRBY', KEYS[4], ARGV[2])
for i = 2, 4 do
  if redis.call('EXPIRETIME', KEYS[i]) < tonumber(ARGV[6]) then
    redis.call('EXPIREAT', KEYS[i], ARGV[6])
  end
end
return {1, tostring(spent), tostring(held)}
"""

# KEYS: the day's spend, the month's spend, the set of events counted on that day, then the
# holds, the holds by expiry and their sum, as in RESERVE.
# ARGV: the event's id, its cost (USD), when the day's and the month's keys expire, the hold's
# id (the request's correlation id), the cost in nano-USD.
# Returns 0 for an event counted before, else {the day's spend, the month's spend} after it.
# The set makes a redelivered event count once (whether it came through llmq.metering or
# inside its completion); it lives as long as the month's spend, so no duplicate can reach a
# figure that a budget check still reads. The cost moves from the request's hold, if any, to
# the spend: the sum of spend and holds does not grow while a request stays within its hold.
SETTLE = """
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then
  return 0
end
redis.call('EXPIREAT', KEYS[3], ARGV[4])
local day = redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
local month = redis.call('INCRBYFLOAT', KEYS[2], ARGV[2])
redis.call('EXPIREAT', KEYS[2], ARGV[4])
local hold = tonumber(redis.call('HGET', KEYS[4], ARGV[5]) or '0')
local take = math.min(hold, tonumber(ARGV[6]))
if take > 0 then
  redis.call('DECRBY', KEYS[6], take)
  if take >= hold then
    redis.call('HDEL', KEYS[4], ARGV[5])
    redis.call('ZREM', KEYS[5], ARGV[5])
  else
    redis.call('HINCRBY', KEYS[4], ARGV[5], -take)
  end
end
return {day, month}
"""

# KEYS: the holds, the holds by expiry, their sum. ARGV: the hold's id, the nano-USD of it
# to keep (costs not counted yet: SETTLE takes them from the hold when it counts them).
# Returns 1 if it gave anything back.
RELEASE = """
local hold = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local keep = tonumber(ARGV[2])
if hold <= keep then
  return 0
end
redis.call('DECRBY', KEYS[3], hold - keep)
if keep > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], keep)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""

PERIOD_NAMES: dict[BudgetPeriod, str] = {"day": "daily", "month": "monthly"}


class Reserved(NamedTuple):
    """A request admitted against its tenant's budget."""

    spent: float
    """The spend it was admitted at."""
    placed: bool
    """Whether its hold was placed now (False: a record of the same id placed it before)."""


class BudgetExceededError(LlmqError):
    """BUDGET_EXCEEDED, with the spend it was refused at, and whether the budget is used up
    for the period (rather than held by requests in flight, or too small for this one)."""

    def __init__(self, message: str, retry_after_s: float | None, *, spent: float, exhausted: bool):
        super().__init__(ErrorCode.BUDGET_EXCEEDED, message, retry_after_s)
        self.spent = spent
        self.exhausted = exhausted


@dataclass(frozen=True)
class Hold:
    """What one request may still cost its tenant: `usd` until it is answered or `until`."""

    id: str
    usd: float
    until: float


def worst_case(work: WorkItem, catalog: Catalog, now: float | None = None) -> Hold:
    """The most the request can cost: every model of its chain still ahead (a cascade or a
    fallback generates again) at its prices, for the bound on the prompt's tokens and
    max_tokens (capped by the model's context) of output."""
    now = time.time() if now is None else now
    route = work.route
    most = worst_cost(work.request.body, [route.current, *route.remaining], catalog)
    return Hold(work.request.correlation_id, most, hold_until(work.request.deadline, now))


def hold_until(deadline: float | None, now: float) -> float:
    """When a hold of a request with this deadline lapses (Unix time)."""
    return now + HOLD_S if deadline is None else deadline + HOLD_AFTER_DEADLINE_S


class Budgets:
    """A tenant's spend per UTC day and month, and its holds: what admitted requests may
    still cost. Admission admits a request only while spend + holds + its worst case fit the
    budget, so metered spend never passes it (unless a generation costs more than its worst
    case, which the bound on prompt tokens rules out, or a repeat of a correlation id is
    generated on its first record's hold: docs/budgets.md)."""

    def __init__(self, client: aioredis.Redis, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self._redis = client
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        self._release = client.register_script(RELEASE)
        self._timeout_s = timeout_s

    async def reserve(
        self, tenant: str, limits: TenantLimits, hold: Hold, now: float | None = None
    ) -> Reserved | None:
        """Hold the request's worst case against the tenant's budget and say at what spend it
        was admitted, or raise BUDGET_EXCEEDED saying what is spent and held and when to
        retry. While Redis is down or slower than `timeout_s`, admit unchecked (None) with a
        warning or raise BUDGET_UNAVAILABLE, as the tenant's `budget_when_unavailable` says."""
        if limits.budget_usd is None:
            return None
        now = time.time() if now is None else now
        period = limits.budget_period
        try:
            async with asyncio.timeout(self._timeout_s):
                admitted, spent, held = await self._reserve(
                    keys=[spend_key(tenant, period_id(period, now)), *_hold_keys(tenant)],
                    args=[
                        hold.id,
                        math.ceil(hold.usd * NANO),
                        repr(limits.budget_usd),
                        now,
                        hold.until,
                        math.ceil(max(hold.until, now + HOLD_S)),
                    ],
                )
        except (RedisError, TimeoutError) as exc:
            if limits.budget_when_unavailable == "refuse":
                raise LlmqError(
                    ErrorCode.BUDGET_UNAVAILABLE,
                    f"tenant {tenant}'s budget cannot be checked now, and its policy is to "
                    "refuse then (budget_when_unavailable = refuse)",
                    retry_after_s=RETRY_WHILE_HELD_S,
                ) from exc
            log.warning("budgets unavailable, admitting tenant %s unchecked: %r", tenant, exc)
            return None
        if not int(admitted):
            raise _exceeded(
                tenant, limits, hold, spent=float(spent), held=float(held) / NANO, now=now
            )
        return Reserved(float(spent), placed=int(admitted) == 1)

    async def record(self, event: MeteringEvent) -> bool:
        """Add the event's cost to its tenant's spend, once however often it is delivered,
        taking it from the request's hold (see `settle`); False if it did not count."""
        return await self.settle(event) is not None

    async def settle(self, event: MeteringEvent) -> dict[BudgetPeriod, float] | None:
        """Add the event's cost to its tenant's spend, once however often it is delivered,
        taking it from the request's hold; returns the day's and the month's spend after it.

        None for an event already counted, a free one, or one whose month is too old to
        matter. Raises RedisError: the caller must retry and not commit the metering record
        until this succeeds (retrying is safe, the event is counted once)."""
        month_end = period_end("month", event.at) + KEEP_AFTER_PERIOD_S
        if event.cost_usd == 0 or month_end <= time.time():
            return None
        added = await self._settle(
            keys=[
                spend_key(event.tenant, period_id("day", event.at)),
                spend_key(event.tenant, period_id("month", event.at)),
                spend_key(event.tenant, "seen:" + period_id("day", event.at)),
                *_hold_keys(event.tenant),
            ],
            args=[
                event.event_id,
                repr(event.cost_usd),
                int(period_end("day", event.at)) + KEEP_AFTER_PERIOD_S,
                int(month_end),
                event.correlation_id,
                round(event.cost_usd * NANO),
            ],
        )
        if not added:
            return None
        day, month = added
        return {"day": float(day), "month": float(month)}

    async def release(self, tenant: str, hold_id: str, kept: Sequence[float] = ()) -> bool:
        """Give back what is left of a request's hold (it is answered) but the USD `kept`,
        costs of it not counted yet, which settling them takes; False if nothing was given
        back. Raises RedisError."""
        keep = sum(round(usd * NANO) for usd in kept)  # as SETTLE takes each from the hold
        return bool(await self._release(keys=_hold_keys(tenant), args=[hold_id, keep]))

    async def spent(self, tenant: str, period: BudgetPeriod, at: float | None = None) -> float:
        """USD the tenant spent in the day or month that contains `at` (default: now)."""
        at = time.time() if at is None else at
        raw = await self._redis.get(spend_key(tenant, period_id(period, at)))
        return 0.0 if raw is None else float(raw)

    async def held(self, tenant: str) -> float:
        """USD the tenant's admitted and unanswered requests may still cost."""
        raw = await self._redis.get(_hold_keys(tenant)[2])
        return 0.0 if raw is None else int(raw) / NANO


def _hold_keys(tenant: str) -> list[str]:
    """The holds by id, the holds by expiry, and their sum."""
    return [spend_key(tenant, name) for name in ("holds", "holds:until", "held")]


def _exceeded(
    tenant: str, limits: TenantLimits, hold: Hold, *, spent: float, held: float, now: float
) -> BudgetExceededError:
    """Why the request does not fit, and when trying again may help."""
    assert limits.budget_usd is not None
    budget, period = limits.budget_usd, limits.budget_period
    resets = period_end(period, now)
    at = datetime.fromtimestamp(resets, UTC).strftime("%Y-%m-%d %H:%M UTC")
    of_budget = f"of its {usd(budget)} {PERIOD_NAMES[period]} budget"
    wait: float | None = None  # no wait helps: not a retry_after, which the Batch API heeds
    if budget == 0:
        message = f"tenant {tenant} is suspended: its budget_usd is 0 in the tenants file"
    elif spent >= budget:
        message = f"tenant {tenant} has spent {usd(spent)} {of_budget}; it resets at {at}"
        wait = resets - now
    elif hold.usd > budget:
        message = (
            f"this request may cost up to {usd(hold.usd)} (its prompt and max_tokens at the "
            f"model's prices), more than tenant {tenant}'s whole {usd(budget)} "
            f"{PERIOD_NAMES[period]} budget; lower max_tokens or shorten the prompt"
        )
    elif spent + hold.usd > budget:
        message = (
            f"tenant {tenant} has spent {usd(spent)} {of_budget}, and this request may cost "
            f"up to {usd(hold.usd)} (its prompt and max_tokens at the model's prices); "
            f"lower max_tokens, or wait until it resets at {at}"
        )
        wait = resets - now
    else:
        message = (
            f"tenant {tenant} has spent {usd(spent)} {of_budget}, and requests in flight "
            f"may cost up to {usd(held)} more; this one may cost up to {usd(hold.usd)}, "
            "so it must wait for them to finish"
        )
        wait = RETRY_WHILE_HELD_S
    exhausted = spent >= budget or (spent + hold.usd > budget and spent >= EXHAUSTED * budget)
    return BudgetExceededError(message, wait, spent=spent, exhausted=exhausted)
