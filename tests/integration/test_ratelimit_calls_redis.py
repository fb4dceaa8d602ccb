"""Rate limits against a real redis-server of this module's own: the choices of a call (the
front door's `n`) admitted together and charged once, or refused together with the call's
wait; and a retry at the moment a refusal names, admitted."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
import redis
import redis.asyncio as aioredis

from gateway.openai import read_call
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.names import rate_keys
from schemas.request import ChoiceOf
from schemas.tenants import TenantLimits, TenantPolicy
from streams.admit import parse, route
from streams.budget import Budgets
from streams.gate import TenantGate
from streams.ratelimit import RateLimiter
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]

NOW = 1_800_000_000.0
"""A fixed moment for checks that pass `now`: bucket arithmetic without waiting."""
PER_SECOND = TenantLimits(requests_per_minute=60)
N = 8


def _level(sync: redis.Redis, bucket: int = 0) -> float:
    """What tenant acme's bucket (0: requests, 1: tokens) holds as last written."""
    return float(cast("bytes", sync.hget(rate_keys("acme", "")[bucket], "level")))


async def _outcome(
    limiter: RateLimiter,
    request_id: str,
    now: float,
    *,
    limits: TenantLimits = PER_SECOND,
    tokens: int = 1,
    call: ChoiceOf | None = None,
) -> LlmqError | None:
    """None when admitted, else the refusal."""
    try:
        await limiter.check(
            "acme", limits, tokens, request_id=request_id, fingerprint="fp", call=call, now=now
        )
    except LlmqError as error:
        return error
    return None


async def _call(
    limiter: RateLimiter,
    call_id: str,
    now: float,
    *,
    limits: TenantLimits = PER_SECOND,
    tokens: int = 1,
    n: int = N,
) -> list[LlmqError | None]:
    """Each choice of a call checked at once, as the door names them ("<id>", "<id>-<i>"):
    they come through different partitions."""
    call = ChoiceOf(call_id=call_id, n=n)
    ids = [call_id, *(f"{call_id}-{i}" for i in range(1, n))]
    checks = (_outcome(limiter, i, now, limits=limits, tokens=tokens, call=call) for i in ids)
    return list(await asyncio.gather(*checks))


def test_a_calls_choices_are_refused_together_then_admitted_together_charged_once(
    redis_port: int, sync: redis.Redis
) -> None:
    """Each choice admitted alone, 5 of 8 were charged and 3 refused, the call a 429 whose
    Retry-After was one choice's wait: a client obeying it never got a call of 8 through
    while its tenant was near its limit (0 of 300 calls in 300 s)."""

    async def body(client: aioredis.Redis) -> None:
        limiter = RateLimiter(client)
        for i in range(55):
            assert await _outcome(limiter, f"s-{i}", NOW) is None
        assert _level(sync) == 5
        refused = await _call(limiter, "call-1", NOW)
        assert all(r is not None and r.code is ErrorCode.RATE_LIMITED for r in refused)
        assert {None if r is None else r.retry_after_s for r in refused} == {3.0}  # the call's
        assert _level(sync) == 5  # nothing charged
        assert refused[0] is not None and refused[0].message == (
            "tenant acme has too few requests left for this call of 8 choices (8 requests): "
            "its requests_per_minute is a bucket of 60, refilled at 60 a minute; retry in 3.0 s"
        )
        # Sent again when told (a new call: the door's ids are new each time): all admitted.
        assert await _call(limiter, "call-2", NOW + 3.0) == [None] * N
        assert _level(sync) == 0  # 5, 3 refilled, 8 charged once
        # The bucket holds 8 again: a late choice of the refused call is refused with it,
        # not charged for the call while its client was told 429.
        late = await _outcome(limiter, "call-1-7", NOW + 11, call=ChoiceOf(call_id="call-1", n=N))
        assert late is not None and late.code is ErrorCode.RATE_LIMITED
        assert await _outcome(limiter, "x", NOW + 11) is None
        assert _level(sync) == 7
        # A choice read again passes free; one past the call's n is a request of its own.
        two = ChoiceOf(call_id="call-2", n=N)
        assert await _outcome(limiter, "call-2-3", NOW + 11, call=two) is None
        assert _level(sync) == 7
        assert await _outcome(limiter, "call-2-8", NOW + 11, call=two) is None
        assert _level(sync) == 6

    run_async(redis_port, body)


def test_a_calls_tokens_are_charged_once_for_every_choice(
    redis_port: int, sync: redis.Redis
) -> None:
    limits = TenantLimits(tokens_per_minute=1_000)

    async def body(client: aioredis.Redis) -> None:
        limiter = RateLimiter(client)
        assert await _call(limiter, "a", NOW, limits=limits, tokens=200, n=4) == [None] * 4
        assert _level(sync, 1) == 200
        refused = await _call(limiter, "b", NOW, limits=limits, tokens=200, n=4)
        # 600 missing at 1000/60 a second: 36 s, for every choice.
        assert {None if r is None else r.retry_after_s for r in refused} == {36.0}
        assert refused[0] is not None and "(about 800 tokens)" in refused[0].message
        assert _level(sync, 1) == 200
        assert await _call(limiter, "c", NOW + 36, limits=limits, tokens=200, n=4) == [None] * 4
        assert _level(sync, 1) == pytest.approx(0, abs=1e-6)

    run_async(redis_port, body)


def test_the_doors_choices_pass_the_gate_together(redis_port: int, sync: redis.Redis) -> None:
    """Through the records the door publishes for n = 8 and the stream processor's gate, on
    Redis's clock: a full bucket of 10 admits the call and charges 8; the next call finds
    about 2 and every choice is refused, told the call's wait, nothing charged."""
    catalog = Catalog.builtin()
    policy = TenantPolicy(default=TenantLimits(requests_per_minute=10))
    body = {"model": catalog.default, "n": N, "messages": [{"role": "user", "content": "Hi"}]}

    async def checked(gate: TenantGate) -> list[LlmqError | None]:
        call = read_call(body, tenant="acme", lane=None, catalog=catalog, timeout_s=60)
        outcomes: list[LlmqError | None] = []
        for request in call.requests:
            try:
                await gate.check(route(parse(request.record()), catalog))
            except LlmqError as error:
                outcomes.append(error)
            else:
                outcomes.append(None)
        return outcomes

    async def run(client: aioredis.Redis) -> None:
        gate = TenantGate(policy, RateLimiter(client), Budgets(client), catalog)
        assert await checked(gate) == [None] * N
        assert _level(sync) == 2
        refused = await checked(gate)
        waits = [r.retry_after_s for r in refused if r is not None and r.retry_after_s]
        assert len(waits) == N and 34 <= min(waits) <= max(waits) <= min(waits) + 0.1
        assert _level(sync) == 2

    run_async(redis_port, run)


@pytest.mark.parametrize(
    ("now", "case"),
    [
        (1_764_000_000.0, (60, 51, 31, 22.0)),
        (1_764_000_000.123456, (60, 51, 31, 22.0)),
        (1_764_000_000.123449, (60, 51, 31, 22.0)),
        (NOW, (1_000, 551, 729, 16.8)),
    ],
)
def test_a_retry_at_the_moment_told_is_admitted(
    redis_port: int, now: float, case: tuple[int, int, int, float]
) -> None:
    """The buckets' level and time were stored with Lua's tostring, 14 significant digits: a
    time's last digits lost, a retry at now + retry_after_s was refused again. So was one
    short of its cost by float noise (449 + 16.8 s at 1000/60 a second < 729)."""
    tpm, first, cost, wait = case  # the bucket, what is taken first, the next cost, its wait
    limits = TenantLimits(tokens_per_minute=tpm)

    async def body(client: aioredis.Redis) -> None:
        limiter = RateLimiter(client)
        assert await _outcome(limiter, "a", now, limits=limits, tokens=first) is None
        refusal = await _outcome(limiter, "b", now, limits=limits, tokens=cost)
        assert refusal is not None and refusal.retry_after_s == wait
        assert await _outcome(limiter, "c", now + wait, limits=limits, tokens=cost) is None

    run_async(redis_port, body)
