"""Rate limits against a real redis-server of this module's own (no Kafka, no engine):
bucket arithmetic, atomicity, isolation, concurrency, and admission while Redis is down or
hung; and the result store (budgets: test_budgets_redis.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import signal
import time
from typing import cast

import pytest
import redis
import redis.asyncio as aioredis

from llmq.pipelined import Pipelined
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.result import InferenceResult
from schemas.tenants import TenantLimits, TenantPolicy
from streams.budget import Budgets, Hold
from streams.gate import TenantGate
from streams.ratelimit import BUCKET_TTL_S, CHARGED_TTL_S, RateLimiter
from streams.store import RedisStore
from tests.integration.helpers import run_async, run_with, start_redis
from tests.unit.stages import admitted, raw_request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]

NOW = 1_800_000_000.0
"""A fixed moment for checks that pass `now`: bucket arithmetic without waiting."""


_IDS = itertools.count()


async def _outcome(
    limiter: RateLimiter,
    tenant: str,
    limits: TenantLimits,
    tokens: int = 1,
    now: float | None = NOW,
    *,
    request_id: str | None = None,
    fingerprint: str = "fp",
) -> LlmqError | None:
    """None when admitted, else the refusal; each check is a new request but for a
    `request_id` given."""
    request_id = f"r-{next(_IDS)}" if request_id is None else request_id
    try:
        await limiter.check(
            tenant, limits, tokens, request_id=request_id, fingerprint=fingerprint, now=now
        )
    except LlmqError as error:
        return error
    return None


# Rate limits


def test_requests_bucket_refuses_with_the_right_wait_and_refills(
    redis_port: int, sync: redis.Redis
) -> None:
    """120 per minute on Redis's own clock: 120 at once, then one more every half second."""
    limits = TenantLimits(requests_per_minute=120)

    async def body(client: aioredis.Redis) -> None:
        limiter = RateLimiter(client)
        started = time.monotonic()
        admitted = 0
        while (refusal := await _outcome(limiter, "acme", limits, now=None)) is None:
            admitted += 1
        elapsed = time.monotonic() - started
        assert 120 <= admitted <= 120 + 2 * elapsed + 1
        assert refusal.code is ErrorCode.RATE_LIMITED and refusal.retriable
        assert refusal.retry_after_s is not None and 0 < refusal.retry_after_s <= 0.5
        assert re.fullmatch(
            r"tenant acme has too few requests left for this request: its requests_per_minute "
            r"is a bucket of 120, refilled at 120 a minute; retry in 0\.[1-5] s",
            refusal.message,
        )
        await asyncio.sleep(refusal.retry_after_s)
        assert await _outcome(limiter, "acme", limits, now=None) is None
        assert await _outcome(limiter, "acme", limits, now=None) is not None

    run_async(redis_port, body)
    buckets = cast("list[bytes]", sync.keys("llmq:rate:{acme}:requests"))
    marks = cast("list[bytes]", sync.keys("llmq:rate:{acme}:charged:*"))
    assert len(cast("list[bytes]", sync.keys("llmq:rate:*"))) == len(buckets) + len(marks)
    assert buckets == [b"llmq:rate:{acme}:requests"]
    assert 0 < cast("int", sync.ttl(buckets[0])) <= BUCKET_TTL_S
    assert len(marks) >= 121  # one per request admitted
    for key in marks:
        assert BUCKET_TTL_S < cast("int", sync.ttl(key)) <= CHARGED_TTL_S


def _levels(sync: redis.Redis, tenant: str = "acme") -> tuple[float, float]:
    """What the requests and the tokens bucket of `tenant` hold (NaN: no bucket)."""
    requests, tokens = (
        float(cast("bytes | None", sync.hget(f"llmq:rate:{{{tenant}}}:{name}", "level")) or "nan")
        for name in ("requests", "tokens")
    )
    return requests, tokens


def test_tokens_bucket_is_independent_and_refills_continuously(
    redis_port: int, sync: redis.Redis
) -> None:
    limits = TenantLimits(requests_per_minute=600, tokens_per_minute=1_000)

    async def body(client: aioredis.Redis) -> None:
        limiter = RateLimiter(client)
        assert await _outcome(limiter, "acme", limits, 600) is None
        refusal = await _outcome(limiter, "acme", limits, 500)
        assert refusal is not None and refusal.code is ErrorCode.RATE_LIMITED
        # 100 missing at 1000/60 per second: 6 s.
        assert refusal.retry_after_s == 6.0
        assert refusal.message == (
            "tenant acme has too few tokens left for this request (about 500 tokens): its "
            "tokens_per_minute is a bucket of 1000, refilled at 1000 a minute; retry in 6.0 s"
        )
        assert _levels(sync) == (599, 400)  # plenty of requests left: only tokens refuse
        assert await _outcome(limiter, "acme", limits, 500, now=NOW + 5.9) is not None
        assert await _outcome(limiter, "acme", limits, 500, now=NOW + 6.0) is None
        requests, tokens = _levels(sync)
        assert requests == 599 and tokens == pytest.approx(0, abs=1e-6)

    run_async(redis_port, body)


def test_a_refused_request_consumes_neither_bucket(redis_port: int, sync: redis.Redis) -> None:
    limits = TenantLimits(requests_per_minute=2, tokens_per_minute=1_000)

    async def body(client: aioredis.Redis) -> None:
        limiter = RateLimiter(client)
        assert await _outcome(limiter, "acme", limits, 900) is None
        assert _levels(sync) == (1, 100)
        # The tokens bucket refuses: the requests bucket keeps its last request.
        tokens_refusal = await _outcome(limiter, "acme", limits, 500)
        assert tokens_refusal is not None and "tokens_per_minute" in tokens_refusal.message
        assert _levels(sync) == (1, 100)
        assert await _outcome(limiter, "acme", limits, 100) is None
        assert _levels(sync) == (0, 0)
        # The requests bucket refuses (one request per 30 s): no tokens are taken either.
        state = sync.hgetall("llmq:rate:{acme}:tokens")
        requests_refusal = await _outcome(limiter, "acme", limits, 0, now=NOW + 15)
        assert requests_refusal is not None and requests_refusal.retry_after_s == 15.0
        assert "requests_per_minute is a bucket of 2," in requests_refusal.message
        assert await _outcome(limiter, "acme", limits, 250, now=NOW + 15) is not None
        assert sync.hgetall("llmq:rate:{acme}:tokens") == state  # timestamps included
        assert await _outcome(limiter, "acme", limits, 500, now=NOW + 30) is None
        requests, tokens = _levels(sync)
        assert requests == 0 and tokens == pytest.approx(0, abs=1e-6)

    run_async(redis_port, body)


def test_the_longer_wait_is_reported_when_both_buckets_refuse(redis_port: int) -> None:
    limits = TenantLimits(requests_per_minute=60, tokens_per_minute=60)

    async def body(client: aioredis.Redis) -> None:
        limiter = RateLimiter(client)
        assert await _outcome(limiter, "acme", limits, 60) is None
        for _ in range(59):
            assert await _outcome(limiter, "acme", limits, 0) is None
        refusal = await _outcome(limiter, "acme", limits, 10)
        assert refusal is not None and refusal.retry_after_s == 10.0
        assert "tokens_per_minute is a bucket of 60," in refusal.message

    run_async(redis_port, body)


def test_a_request_read_again_is_charged_once(redis_port: int, sync: redis.Redis) -> None:
    """A stream processor stopped after sending a request on reads its record again: the same
    id and content pass free (a refusal would reach the app beside the answer), the id with
    other content or another id is charged, and a refused request leaves no mark."""
    limits = TenantLimits(requests_per_minute=1, tokens_per_minute=1_000)

    async def body(client: aioredis.Redis) -> None:
        limiter = RateLimiter(client)
        for _ in range(2):
            assert await _outcome(limiter, "acme", limits, 100, request_id="c-1") is None
        assert _levels(sync) == (0, 900)
        assert 0 < cast("int", sync.ttl("llmq:rate:{acme}:charged:c-1")) <= CHARGED_TTL_S
        other = await _outcome(limiter, "acme", limits, 100, request_id="c-1", fingerprint="x")
        assert other is not None and other.code is ErrorCode.RATE_LIMITED
        assert await _outcome(limiter, "acme", limits, 100, request_id="c-2") is not None
        assert not sync.exists("llmq:rate:{acme}:charged:c-2")
        later = NOW + 60  # the requests bucket holds one again
        for _ in range(2):
            assert await _outcome(limiter, "acme", limits, 100, later, request_id="c-2") is None
        assert _levels(sync) == (0, 900)

    run_async(redis_port, body)


def test_a_sampled_request_read_again_passes_the_gate_free(redis_port: int) -> None:
    """Sampled requests too (generated again, but one request of the app's): refused, its
    refusal, stored first under its id, would reach the app in place of its answer."""
    policy = TenantPolicy(default=TenantLimits(requests_per_minute=1))
    work = admitted(raw_request("s-1", temperature=1.0))
    assert not work.request.cacheable

    async def body(client: aioredis.Redis) -> ErrorCode:
        gate = TenantGate(policy, RateLimiter(client), Budgets(client), Catalog.builtin())
        for _ in range(2):
            await gate.check(work)
        with pytest.raises(LlmqError) as caught:
            await gate.check(admitted(raw_request("s-2", temperature=1.0)))
        return caught.value.code

    assert run_async(redis_port, body) is ErrorCode.RATE_LIMITED


def test_tenants_are_isolated_and_limits_may_change(redis_port: int) -> None:
    small = TenantLimits(requests_per_minute=1)

    async def body(client: aioredis.Redis) -> None:
        limiter = RateLimiter(client)
        assert await _outcome(limiter, "a", small) is None
        assert await _outcome(limiter, "a", small) is not None
        assert await _outcome(limiter, "b", small) is None
        assert await _outcome(limiter, "a", TenantLimits()) is None  # lifted: unlimited
        # Raised: the empty bucket refills at the new rate (10 a second), not all at once.
        raised = TenantLimits(requests_per_minute=600)
        assert await _outcome(limiter, "a", raised, now=NOW + 0.15) is None
        assert await _outcome(limiter, "a", raised, now=NOW + 0.15) is not None

    run_async(redis_port, body)


def test_concurrent_checks_never_admit_more_than_the_bucket(redis_port: int) -> None:
    limits = TenantLimits(requests_per_minute=100, tokens_per_minute=50_000)

    async def body(client: aioredis.Redis) -> tuple[int, int, float]:
        # What is checked is the script's atomicity, not how fast 300 connections open on a
        # busy machine: a check past its timeout admits unchecked, by design (tested below).
        limiter = RateLimiter(client, timeout_s=120)
        fixed = await asyncio.gather(*(_outcome(limiter, "x", limits, 10) for _ in range(300)))
        started = time.monotonic()
        live = await asyncio.gather(
            *(_outcome(limiter, "y", limits, 10, now=None) for _ in range(300))
        )
        elapsed = time.monotonic() - started
        return fixed.count(None), live.count(None), elapsed

    fixed, live, elapsed = run_async(redis_port, body)
    assert fixed == 100
    assert 100 <= live <= 100 + elapsed * 100 / 60 + 1


def _checks_during(outage: signal.Signals) -> None:
    """A rate-limit and a budget check once Redis suffers `outage`. The client keeps its
    pooled connection across the outage and has no socket timeout: only the checks' own
    timeouts end a wait on a hung Redis (else the test runs into its timeout)."""
    limits = TenantLimits(requests_per_minute=1, budget_usd=0.0)
    proc, port = start_redis()

    async def body(client: aioredis.Redis) -> None:
        limiter, budgets = RateLimiter(client), Budgets(client)
        assert await _outcome(limiter, "acme", limits) is None
        assert await _outcome(limiter, "acme", limits) is not None
        proc.send_signal(outage)
        assert await _outcome(limiter, "acme", limits) is None
        await budgets.reserve("acme", limits, Hold("probe", 0.0, time.time() + 3600))

    url = f"redis://127.0.0.1:{port}/0"
    try:
        run_with(lambda: aioredis.Redis.from_url(url), body)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("outage", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_redis_down_or_hung_admits_with_a_warning(
    outage: signal.Signals, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGSTOP leaves a Redis that holds its connections but never answers: the warnings
    name the check's TimeoutError, whose text is empty (it read "unchecked: ")."""
    with caplog.at_level(logging.WARNING):
        _checks_during(outage)
    messages = [r.getMessage() for r in caplog.records]
    for what in ("rate limits", "budgets"):
        warned = [m for m in messages if m.startswith(f"{what} unavailable, admitting tenant acme")]
        assert warned, messages
        if outage is signal.SIGSTOP:
            assert f"{what} unavailable, admitting tenant acme unchecked: TimeoutError()" in warned


def test_the_result_store_keeps_the_first_result_and_hands_it_back(redis_port: int) -> None:
    first = InferenceResult(correlation_id="c-1", tenant="acme", status="error")
    second = InferenceResult(correlation_id="c-1", tenant="acme", status="ok")
    other = InferenceResult(correlation_id="c-1", tenant="zeta", status="ok")

    async def body(client: aioredis.Redis) -> list[InferenceResult]:
        store = RedisStore(Pipelined(client), cache_ttl_s=60, result_ttl_s=60)
        return [await store.keep_result(r) for r in (first, second, other)]

    kept = run_async(redis_port, body)
    assert [r.status for r in kept] == ["error", "error", "ok"], "first per tenant and id"
