"""Per-tenant rate limits: a requests and a tokens bucket per tenant, in Redis."""

from __future__ import annotations

import asyncio
import logging
import math

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.errors import ErrorCode, LlmqError
from schemas.names import rate_call_key, rate_keys
from schemas.request import ChoiceOf
from schemas.tenants import TenantLimits

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 0.5
"""How long admission waits for Redis before admitting unchecked (a hung Redis, or a client
retrying with backoff, must not stall every request)."""
BUCKET_TTL_S = 60
"""A bucket refills completely within a minute, so an expired key and a full bucket are the
same: idle tenants leave nothing behind."""
CHARGED_TTL_S = 300
"""How long a charged request is remembered, so that its record read again (a stream
processor that stopped after sending it on, before committing it) is not charged twice: its
refusal, stored first under its id, would reach the app in place of the answer of the
request sent on. Its fingerprint with it: an id sent again with other content is another
request. Sampled requests too: one read again is generated again, but it is one request of
the app's. A call of several choices charged is remembered as long, for its other choices."""
CALL_REFUSED_TTL_S = CHARGED_TTL_S
"""How long a call of several choices refused is remembered, for its other choices, which
come through other partitions, later: each is refused with it, rather than charged for the
call after the buckets refilled, while its client was told 429 and retries it as a new call.
As long as a call charged is: a partition that lags behind (a restart, a rebalance) brings
a choice minutes after its siblings, which found the call's mark gone charged it whole."""

# KEYS: the requests bucket, the tokens bucket, the request's charged mark and, for a choice
# of a call of several, the call's mark. ARGV: for each bucket its capacity (the per-minute
# figure; 0 = unlimited) and one choice's cost, then `now` ('' = Redis's clock), the buckets'
# and the charged marks' lives, the request's fingerprint, the call's choices (1 for a lone
# request) and a refused call's life. Each bucket is a hash {level, ts}; a missing one is
# full. Numbers are stored with 17 significant digits (tostring keeps 14: a retry at the
# moment told was refused for the digits lost), and a shortfall of a microsecond's refill is
# float noise, not a refusal.
# Either both buckets are charged, for every choice of the call, and the marks set (the
# request's to its fingerprint), or neither is. A request whose mark holds its fingerprint is
# admitted free; a choice of a call charged is admitted free (up to the call's choices, each
# within the tokens charged a choice: past them it is charged on its own), and one of a call
# refused is refused until the call's wait ends, and then, while the refusal is remembered,
# at once. Returns {0} when admitted, else {bucket index, seconds until it holds the cost}
# (a string: Lua numbers become integers in replies).
CHECK_AND_TAKE = """
local function exact(x)
  return string.format('%.17g', x)
end
if redis.call('GET', KEYS[3]) == ARGV[8] then
  return {0}
end
local now = tonumber(ARGV[5])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local call, n = KEYS[4], tonumber(ARGV[9])
if call then
  local mark = redis.call('HMGET', call, 'bucket', 'until', 'left', 'tokens')
  if mark[1] then
    return {tonumber(mark[1]), exact(math.max(0, tonumber(mark[2]) - now))}
  end
  if mark[3] then
    if tonumber(mark[3]) > 0 and tonumber(ARGV[4]) <= tonumber(mark[4]) then
      redis.call('HINCRBY', call, 'left', -1)
      redis.call('SET', KEYS[3], ARGV[8], 'EX', ARGV[7])
      return {0}
    end
    call, n = nil, 1
  end
end
local levels, worst, wait = {}, 0, 0
for i = 1, 2 do
  local capacity, cost = tonumber(ARGV[2 * i - 1]), n * tonumber(ARGV[2 * i])
  if capacity > 0 then
    local state = redis.call('HMGET', KEYS[i], 'level', 'ts')
    local level, ts = tonumber(state[1]), tonumber(state[2])
    local rate = capacity / 60
    if level == nil then
      level = capacity
    else
      level = math.min(capacity, level + math.max(0, now - ts) * rate)
    end
    local short = (cost - level) / rate
    if short > 0.000001 and short > wait then
      worst, wait = i, short
    end
    levels[i] = math.max(0, level - cost)
  end
end
if worst > 0 then
  if call then
    redis.call('HSET', call, 'bucket', worst, 'until', exact(now + wait))
    redis.call('EXPIRE', call, ARGV[10])
  end
  return {worst, exact(wait)}
end
for i = 1, 2 do
  if levels[i] then
    redis.call('HSET', KEYS[i], 'level', exact(levels[i]), 'ts', exact(now))
    redis.call('EXPIRE', KEYS[i], ARGV[6])
  end
end
if call then
  redis.call('HSET', call, 'left', n - 1, 'tokens', ARGV[4])
  redis.call('EXPIRE', call, ARGV[7])
end
redis.call('SET', KEYS[3], ARGV[8], 'EX', ARGV[7])
return {0}
"""


class RateLimiter:
    """Token buckets shared by every stream-processor instance through one Redis.

    With Redis unavailable or slower than `timeout_s` it admits (and logs a warning):
    availability over strictness, since a rate limit protects capacity and a short outage of
    it harms less than refusing every request."""

    def __init__(self, client: aioredis.Redis, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        self._script = client.register_script(CHECK_AND_TAKE)
        self._timeout_s = timeout_s

    async def check(
        self,
        tenant: str,
        limits: TenantLimits,
        tokens: int,
        *,
        request_id: str,
        fingerprint: str,
        call: ChoiceOf | None = None,
        now: float | None = None,
    ) -> None:
        """Admit one request estimated at `tokens`, or raise RATE_LIMITED with when to retry.
        A request charged in the last CHARGED_TTL_S under its id, with its `fingerprint`, is
        admitted again free: its record read again, or its app's resend. A choice of a `call`
        of several is admitted or refused with its call: the first to come is charged for
        every choice at once, or refused with the wait for all of them (CHECK_AND_TAKE).

        Raises INVALID_REQUEST (not retriable) when the request, or the call, needs more than
        the tenant's whole bucket: no wait would help. `now` (Unix time) replaces Redis's
        clock; leave it None in production so that every instance shares one clock.
        """
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        _check_fits(tenant, limits, tokens, call)
        if rpm is None and tpm is None:
            return
        n = 1 if call is None else call.n
        keys = list(rate_keys(tenant, request_id))
        if call is not None:
            keys.append(rate_call_key(tenant, call.call_id))
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await self._script(
                    keys=keys,
                    args=[
                        rpm or 0,
                        1,
                        tpm or 0,
                        tokens,
                        "" if now is None else repr(now),
                        BUCKET_TTL_S,
                        CHARGED_TTL_S,
                        fingerprint,
                        n,
                        CALL_REFUSED_TTL_S,
                    ],
                )
        except (RedisError, TimeoutError) as exc:
            log.warning("rate limits unavailable, admitting tenant %s unchecked: %r", tenant, exc)
            return
        if reply[0] == 0:
            return
        # Rounded up to a tenth, so that a retry at the stated moment succeeds (a shortfall
        # of float noise, a microsecond's refill, is admitted).
        wait = math.ceil(float(reply[1]) * 10 - 1e-6) / 10
        what = "this request" if call is None else f"this call of {n} choices"
        if reply[0] == 1:
            unit, name, capacity = "requests", "requests_per_minute", rpm
            need = "" if call is None else f" ({n} requests)"
        else:
            unit, name, capacity = "tokens", "tokens_per_minute", tpm
            need = f" (about {n * tokens} tokens)"
        raise LlmqError(
            ErrorCode.RATE_LIMITED,
            f"tenant {tenant} has too few {unit} left for {what}{need}: its {name} is a bucket "
            f"of {capacity}, refilled at {capacity} a minute; retry in {wait:.1f} s",
            retry_after_s=wait,
        )


def _check_fits(tenant: str, limits: TenantLimits, tokens: int, call: ChoiceOf | None) -> None:
    """INVALID_REQUEST for a request, or a call's choices together, larger than the tenant's
    bucket: never admitted, however long it waits. Not prompt_too_large, which an app reads
    (as OpenAI's context_length_exceeded) as a prompt past the model's context, and trims."""
    tpm = limits.tokens_per_minute
    if tpm is not None and tokens > tpm:
        raise LlmqError(
            ErrorCode.INVALID_REQUEST,
            f"this request needs about {tokens} tokens (prompt estimate + max_tokens) and "
            f"tenant {tenant} may use at most {tpm} tokens per minute (tokens_per_minute); "
            "lower max_tokens or shorten the prompt",
            param="max_tokens",
        )
    if call is None:
        return
    why = limits.choices_never_fit(tenant, call.n, tokens)
    if why is not None:
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="n")
