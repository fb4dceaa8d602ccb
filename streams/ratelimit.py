"""Per-tenant rate limits: a requests and a tokens bucket per tenant, in Redis."""

from __future__ import annotations

import asyncio
import logging
import math

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.errors import ErrorCode, LlmqError
from schemas.names import rate_keys
from schemas.tenants import TenantLimits

log = logging.getLogger(__name__)

"""A rough tokens-from-characters ratio for English text; no tokenizer runs at admission."""
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
the app's."""

# KEYS: the requests bucket, the tokens bucket, the request's charged mark. ARGV: for each
# bucket its capacity (the per-minute figure; 0 = unlimited) and this request's cost, then
# `now` ('' = Redis's clock), the buckets' and the mark's lives, and the request's
# fingerprint. Each bucket is a hash {level, ts}; a missing one is full.
# Either both buckets are charged, and the mark set to the fingerprint, or neither is; a
# request whose mark holds its fingerprint is admitted free. Returns {0} when admitted, else
# {bucket index, seconds until it holds the cost} (a string: Lua numbers become integers in
# replies).
CHECK_AND_TAKE = """
if redis.call('GET', KEYS[3]) == ARGV[8] then
  return {0}
end
local now = tonumber(ARGV[5])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local levels, worst, wait = {}, 0, 0
for i = 1, 2 do
  local capacity, cost = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  if capacity > 0 then
    local state = redis.call('HMGET', KEYS[i], 'level', 'ts')
    local level, ts = tonumber(state[1]), tonumber(state[2])
    local rate = capacity / 60
    if level == nil then
      level = capacity
    else
      level = math.min(capacity, level + math.max(0, now - ts) * rate)
    end
    if level < cost and (cost - level) / rate > wait then
      worst, wait = i, (cost - level) / rate
    end
    levels[i] = level
  end
end
if worst > 0 then
  return {worst, tostring(wait)}
end
for i = 1, 2 do
  if levels[i] then
    redis.call('HSET', KEYS[i], 'level', tostring(levels[i] - tonumber(ARGV[2 * i])), 'ts',
      tostring(now))
    redis.call('EXPIRE', KEYS[i], ARGV[6])
  end
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
        now: float | None = None,
    ) -> None:
        """Admit one request estimated at `tokens`, or raise RATE_LIMITED with when to retry.
        A request charged in the last CHARGED_TTL_S under its id, with its `fingerprint`, is
        admitted again free: its record read again, or its app's resend.

        Raises PROMPT_TOO_LARGE (not retriable) when `tokens` exceeds the tenant's whole
        tokens-per-minute bucket: no wait would help. `now` (Unix time) replaces Redis's
        clock; leave it None in production so that every instance shares one clock.
        """
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        if tpm is not None and tokens > tpm:
            raise LlmqError(
                ErrorCode.PROMPT_TOO_LARGE,
                f"this request needs about {tokens} tokens (prompt estimate + max_tokens) and "
                f"tenant {tenant} may use at most {tpm} tokens per minute; lower max_tokens "
                "or shorten the prompt",
            )
        if rpm is None and tpm is None:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await self._script(
                    keys=list(rate_keys(tenant, request_id)),
                    args=[
                        rpm or 0,
                        1,
                        tpm or 0,
                        tokens,
                        "" if now is None else repr(now),
                        BUCKET_TTL_S,
                        CHARGED_TTL_S,
                        fingerprint,
                    ],
                )
        except (RedisError, TimeoutError) as exc:
            log.warning("rate limits unavailable, admitting tenant %s unchecked: %s", tenant, exc)
            return
        if reply[0] == 0:
            return
        # Rounded up, so that a retry at the stated moment succeeds (less float noise).
        wait = math.ceil(float(reply[1]) * 10 - 1e-6) / 10
        limit = f"{rpm} requests" if reply[0] == 1 else f"{tpm} tokens"
        detail = "" if reply[0] == 1 else f" (this request needs about {tokens})"
        raise LlmqError(
            ErrorCode.RATE_LIMITED,
            f"tenant {tenant} is over its {limit} per minute{detail}; retry in {wait:.1f} s",
            retry_after_s=wait,
        )
