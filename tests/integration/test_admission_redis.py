"""Rate limits and budgets against a real redis-server of this module's own (no Kafka, no
engine): bucket arithmetic, atomicity, isolation, concurrency, idempotent spend, outages."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeVar, cast

import pytest
import redis
import redis.asyncio as aioredis
from kafka.errors import KafkaTimeoutError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from schemas.alerts import BudgetAlert
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.names import ALERTS
from schemas.result import InferenceResult
from schemas.tenants import TenantLimits, period_end, period_id
from streams.budget import KEEP_AFTER_PERIOD_S, Budgets, Hold
from streams.budget_alerts import BudgetAlerts
from streams.ratelimit import BUCKET_TTL_S, CHECK_TIMEOUT_S, RateLimiter
from streams.store import RedisStore
from tests.integration.helpers import start_redis
from tools.stack.ports import free_block

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T = TypeVar("T")
NOW = 1_800_000_000.0
"""A fixed moment for checks that pass `now`: bucket arithmetic without waiting."""


@pytest.fixture(autouse=True)
def sync(redis_port: int) -> Iterator[redis.Redis]:
    """A plain client to inspect keys; the database starts empty for every test."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    yield client
    client.close()


def _run(port: int, body: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """Run `body` with a fresh asyncio client of this module's Redis on its own event loop."""
    return _run_with(lambda: aioredis.Redis(port=port), body)


def _run_with(
    connect: Callable[[], aioredis.Redis],
    body: Callable[[aioredis.Redis], Awaitable[T]],
) -> T:
    """Run `body` with the client `connect` makes, on an event loop of its own."""

    async def main() -> T:
        client = connect()
        try:
            return await body(client)
        finally:
            await client.connection_pool.disconnect()

    return asyncio.run(main())


async def _outcome(
    limiter: RateLimiter,
    tenant: str,
    limits: TenantLimits,
    tokens: int = 1,
    now: float | None = NOW,
) -> LlmqError | None:
    """None when admitted, else the refusal."""
    try:
        await limiter.check(tenant, limits, tokens, now)
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
            r"tenant acme is over its 120 requests per minute; retry in 0\.[1-5] s",
            refusal.message,
        )
        await asyncio.sleep(refusal.retry_after_s)
        assert await _outcome(limiter, "acme", limits, now=None) is None
        assert await _outcome(limiter, "acme", limits, now=None) is not None

    _run(redis_port, body)
    keys = cast("list[bytes]", sync.keys("llmq:rate:*"))
    for key in keys:
        assert 0 < cast("int", sync.ttl(key)) <= BUCKET_TTL_S
    assert sorted(keys) == [b"llmq:rate:{acme}:requests"]


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
            "tenant acme is over its 1000 tokens per minute (this request needs about 500); "
            "retry in 6.0 s"
        )
        assert _levels(sync) == (599, 400)  # plenty of requests left: only tokens refuse
        assert await _outcome(limiter, "acme", limits, 500, now=NOW + 5.9) is not None
        assert await _outcome(limiter, "acme", limits, 500, now=NOW + 6.0) is None
        requests, tokens = _levels(sync)
        assert requests == 599 and tokens == pytest.approx(0, abs=1e-6)

    _run(redis_port, body)


def test_a_refused_request_consumes_neither_bucket(redis_port: int, sync: redis.Redis) -> None:
    limits = TenantLimits(requests_per_minute=2, tokens_per_minute=1_000)

    async def body(client: aioredis.Redis) -> None:
        limiter = RateLimiter(client)
        assert await _outcome(limiter, "acme", limits, 900) is None
        assert _levels(sync) == (1, 100)
        # The tokens bucket refuses: the requests bucket keeps its last request.
        tokens_refusal = await _outcome(limiter, "acme", limits, 500)
        assert tokens_refusal is not None and "tokens per minute" in tokens_refusal.message
        assert _levels(sync) == (1, 100)
        assert await _outcome(limiter, "acme", limits, 100) is None
        assert _levels(sync) == (0, 0)
        # The requests bucket refuses (one request per 30 s): no tokens are taken either.
        state = sync.hgetall("llmq:rate:{acme}:tokens")
        requests_refusal = await _outcome(limiter, "acme", limits, 0, now=NOW + 15)
        assert requests_refusal is not None and requests_refusal.retry_after_s == 15.0
        assert "2 requests per minute" in requests_refusal.message
        assert await _outcome(limiter, "acme", limits, 250, now=NOW + 15) is not None
        assert sync.hgetall("llmq:rate:{acme}:tokens") == state  # timestamps included
        assert await _outcome(limiter, "acme", limits, 500, now=NOW + 30) is None
        requests, tokens = _levels(sync)
        assert requests == 0 and tokens == pytest.approx(0, abs=1e-6)

    _run(redis_port, body)


def test_the_longer_wait_is_reported_when_both_buckets_refuse(redis_port: int) -> None:
    limits = TenantLimits(requests_per_minute=60, tokens_per_minute=60)

    async def body(client: aioredis.Redis) -> None:
        limiter = RateLimiter(client)
        assert await _outcome(limiter, "acme", limits, 60) is None
        for _ in range(59):
            assert await _outcome(limiter, "acme", limits, 0) is None
        refusal = await _outcome(limiter, "acme", limits, 10)
        assert refusal is not None and refusal.retry_after_s == 10.0
        assert "60 tokens per minute" in refusal.message

    _run(redis_port, body)


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

    _run(redis_port, body)


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

    fixed, live, elapsed = _run(redis_port, body)
    assert fixed == 100
    assert 100 <= live <= 100 + elapsed * 100 / 60 + 1


def _checks_during(outage: signal.Signals) -> float:
    """Seconds that a rate-limit and a budget check take once Redis suffers `outage`. The
    client is built as the stream processor builds it (timeouts, retries) and keeps its
    pooled connection across the outage."""
    limits = TenantLimits(requests_per_minute=1, budget_usd=0.0)
    proc, port = start_redis()

    async def body(client: aioredis.Redis) -> float:
        limiter, budgets = RateLimiter(client), Budgets(client)
        assert await _outcome(limiter, "acme", limits) is None
        assert await _outcome(limiter, "acme", limits) is not None
        proc.send_signal(outage)
        started = time.monotonic()
        assert await _outcome(limiter, "acme", limits) is None
        await budgets.reserve("acme", limits, _hold(0.0, time.time()))
        return time.monotonic() - started

    url = f"redis://127.0.0.1:{port}/0"
    try:
        return _run_with(
            lambda: aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2), body
        )
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("outage", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_redis_down_or_hung_admits_with_a_warning(
    outage: signal.Signals, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGSTOP leaves a Redis that holds its connections but never answers."""
    with caplog.at_level(logging.WARNING):
        elapsed = _checks_during(outage)
    assert elapsed < 2 * CHECK_TIMEOUT_S + 0.5
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("rate limits unavailable, admitting tenant acme") for m in messages)
    assert any(m.startswith("budgets unavailable, admitting tenant acme") for m in messages)


def test_recording_spend_with_redis_down_raises() -> None:
    async def body(client: aioredis.Redis) -> None:
        with pytest.raises(RedisError):
            await Budgets(client).record(_event("acme", "c-1", 0.1, time.time()))

    _run_with(lambda: aioredis.Redis(port=free_block(1), retry=Retry(NoBackoff(), 0)), body)


# Budgets


def _event(tenant: str, correlation_id: str, cost: float, at: float) -> MeteringEvent:
    return MeteringEvent(
        correlation_id=correlation_id,
        tenant=tenant,
        model="smollm2-135m",
        lane=Lane.STANDARD,
        fingerprint="f" * 64,
        prompt_tokens=100,
        completion_tokens=20,
        cost_usd=cost,
        queue_ms=1.0,
        ttft_ms=2.0,
        engine_ms=3.0,
        worker="w-1",
        at=at,
    )


def _hold(usd: float, at: float, hold_id: str | None = None) -> Hold:
    """A request's hold, lasting an hour from `at`."""
    return Hold(hold_id or uuid.uuid4().hex, usd, at + 3600)


def _noon(days_ago: int = 0) -> float:
    """Noon UTC, today or a few days back: clear of day boundaries, recent enough to count."""
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    return (today - timedelta(days=days_ago)).timestamp()


def test_spend_reaches_the_daily_budget_and_says_when_it_resets(
    redis_port: int, sync: redis.Redis
) -> None:
    at = _noon()
    limits = TenantLimits(budget_usd=1.0)

    async def body(client: aioredis.Redis) -> LlmqError:
        budgets = Budgets(client)
        for i in range(2):
            assert await budgets.record(_event("acme", f"c-{i}", 0.4, at))
            await budgets.reserve("acme", limits, _hold(0.0, at), now=at)  # $0.80: still under
        assert await budgets.record(_event("acme", "c-2", 0.4, at))
        assert await budgets.spent("acme", "day", at) == pytest.approx(1.2)
        await budgets.reserve("other", limits, _hold(0.0, at), now=at)  # tenants are separate
        with pytest.raises(LlmqError) as caught:
            await budgets.reserve("acme", limits, _hold(0.0, at), now=at)
        return caught.value

    error = _run(redis_port, body)
    reset = datetime.fromtimestamp(at, UTC).date() + timedelta(days=1)
    assert error.code is ErrorCode.BUDGET_EXCEEDED
    assert error.message == (
        f"tenant acme has spent $1.20 of its $1.00 daily budget; it resets at {reset} 00:00 UTC"
    )
    assert error.retry_after_s == 12 * 3600
    day = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")
    assert sync.expiretime(f"llmq:spend:{{acme}}:{day}") == (
        period_end("day", at) + KEEP_AFTER_PERIOD_S
    )


def test_a_redelivered_event_counts_once(redis_port: int, sync: redis.Redis) -> None:
    at = _noon()
    event = _event("acme", "c-1", 0.25, at)

    async def body(client: aioredis.Redis) -> list[bool]:
        budgets = Budgets(client)
        first = await budgets.record(event)
        again = await asyncio.gather(*(budgets.record(event.model_copy()) for _ in range(20)))
        assert await budgets.record(_event("acme", "c-1", 0.25, at + 1))  # a retried generation
        assert await budgets.spent("acme", "day", at) == pytest.approx(0.5)
        assert await budgets.spent("acme", "month", at) == pytest.approx(0.5)
        return [first, *again]

    outcomes = _run(redis_port, body)
    assert outcomes == [True] + [False] * 20


def test_monthly_budgets_sum_the_days_and_old_or_free_events_are_skipped(redis_port: int) -> None:
    today = _noon()
    earlier = min(_noon(days_ago=3), datetime.fromtimestamp(today, UTC).replace(day=1).timestamp())
    month_earlier = period_end("month", today) - 86_400 * 100
    limits = TenantLimits(budget_usd=0.3, budget_period="month")

    async def body(client: aioredis.Redis) -> None:
        budgets = Budgets(client)
        same_month = period_end("month", earlier) == period_end("month", today)
        assert await budgets.record(_event("acme", "c-1", 0.2, earlier))
        assert not await budgets.record(_event("acme", "c-2", 0.0, today))
        assert not await budgets.record(_event("acme", "c-3", 5.0, month_earlier))
        assert await budgets.record(_event("acme", "c-4", 0.2, today))
        assert await budgets.spent("acme", "day", today) == pytest.approx(0.2)
        assert await budgets.spent("acme", "month", today) == pytest.approx(
            0.4 if same_month else 0.2
        )
        if same_month:
            with pytest.raises(LlmqError, match=r"of its \$0.3 monthly budget; it resets at"):
                await budgets.reserve("acme", limits, _hold(0.0, today), now=today)

    _run(redis_port, body)


def test_the_result_store_keeps_the_first_result_and_hands_it_back(redis_port: int) -> None:
    first = InferenceResult(correlation_id="c-1", tenant="acme", status="error")
    second = InferenceResult(correlation_id="c-1", tenant="acme", status="ok")
    other = InferenceResult(correlation_id="c-1", tenant="zeta", status="ok")

    async def body(client: aioredis.Redis) -> list[InferenceResult]:
        store = RedisStore(client, cache_ttl_s=60, result_ttl_s=60)
        return [await store.keep_result(r) for r in (first, second, other)]

    kept = _run(redis_port, body)
    assert [r.status for r in kept] == ["error", "error", "ok"], "first per tenant and id"


# Budget holds


def test_concurrent_requests_hold_their_worst_case_and_never_pass_the_budget(
    redis_port: int,
) -> None:
    """200 requests at once, each holding $0.03 of a $1.00 budget: 33 fit. Each then costs
    $0.02, so settling and releasing them leaves room for 11 more at $0.03."""
    at = _noon()
    limits = TenantLimits(budget_usd=1.0)

    async def body(client: aioredis.Redis) -> tuple[list[Hold], list[Hold], float, float]:
        budgets = Budgets(client, timeout_s=120)

        async def admitted(hold: Hold) -> bool:
            try:
                await budgets.reserve("acme", limits, hold, now=at)
            except LlmqError as error:
                assert error.code is ErrorCode.BUDGET_EXCEEDED
                return False
            return True

        holds = [_hold(0.03, at, f"c-{i}") for i in range(200)]
        first = [
            h
            for h, ok in zip(holds, await asyncio.gather(*map(admitted, holds)), strict=True)
            if ok
        ]
        held_before = await budgets.held("acme")
        for hold in first:
            assert await budgets.record(_event("acme", hold.id, 0.02, at))
            assert await budgets.release("acme", hold.id)
        more = [_hold(0.03, at, f"d-{i}") for i in range(20)]
        second = [
            h for h, ok in zip(more, await asyncio.gather(*map(admitted, more)), strict=True) if ok
        ]
        return first, second, held_before, await budgets.spent("acme", "day", at)

    first, second, held_before, spent = _run(redis_port, body)
    assert len(first) == 33
    assert held_before == pytest.approx(0.99)
    assert spent == pytest.approx(0.66)
    assert len(second) == 11


def test_metering_moves_cost_from_the_hold_to_the_spend_once(redis_port: int) -> None:
    """The same event may come inside its completion and on llmq.metering: one settles."""
    at = _noon()
    limits = TenantLimits(budget_usd=1.0)

    async def body(client: aioredis.Redis) -> list[float]:
        budgets = Budgets(client)
        await budgets.reserve("acme", limits, _hold(0.5, at, "c-1"), now=at)
        event = _event("acme", "c-1", 0.2, at)
        seen = [await budgets.held("acme")]
        assert await budgets.record(event)
        assert not await budgets.record(event.model_copy())
        seen += [await budgets.held("acme"), await budgets.spent("acme", "day", at)]
        # A cascade's second generation: it takes what is left of the hold, no more.
        assert await budgets.record(_event("acme", "c-1", 0.4, at + 1))
        seen += [await budgets.held("acme"), await budgets.spent("acme", "day", at)]
        assert not await budgets.release("acme", "c-1"), "the hold is used up"
        return seen

    assert _run(redis_port, body) == pytest.approx([0.5, 0.3, 0.2, 0.0, 0.6])


def test_a_released_or_expired_hold_frees_the_budget(redis_port: int, sync: redis.Redis) -> None:
    at = _noon()
    limits = TenantLimits(budget_usd=1.0)

    async def body(client: aioredis.Redis) -> list[str]:
        budgets = Budgets(client)
        await budgets.reserve("acme", limits, _hold(0.6, at, "c-1"), now=at)
        await budgets.reserve("acme", limits, _hold(0.6, at, "c-1"), now=at)  # redelivered
        messages = []
        for hold_id in ("c-2", "c-3"):
            with pytest.raises(LlmqError) as caught:
                await budgets.reserve("acme", limits, _hold(0.6, at, hold_id), now=at)
            messages.append(caught.value.message)
        assert await budgets.release("acme", "c-1")
        assert not await budgets.release("acme", "c-1")
        await budgets.reserve("acme", limits, Hold("c-4", 0.6, at + 10), now=at)
        await budgets.reserve("acme", limits, _hold(0.6, at, "c-5"), now=at + 11)  # c-4 expired
        assert await budgets.held("acme") == pytest.approx(0.6)
        return messages

    messages = _run(redis_port, body)
    assert messages[0] == (
        "tenant acme has spent $0.00 of its $1.00 daily budget, and requests in flight may cost "
        "up to $0.6 more; this one may cost up to $0.6, so it must wait for them to finish"
    )
    assert sync.hkeys("llmq:spend:{acme}:holds") == [b"c-5"]
    assert cast(int, sync.ttl("llmq:spend:{acme}:held")) > 0


def test_a_request_that_cannot_fit_says_to_lower_max_tokens(redis_port: int) -> None:
    at = _noon()

    async def body(client: aioredis.Redis) -> LlmqError:
        with pytest.raises(LlmqError) as caught:
            await Budgets(client).reserve(
                "acme", TenantLimits(budget_usd=0.5), _hold(0.75, at), now=at
            )
        return caught.value

    error = _run(redis_port, body)
    assert error.code is ErrorCode.BUDGET_EXCEEDED
    assert "may cost up to $0.75" in error.message and "lower max_tokens" in error.message
    assert error.retry_after_s == 12 * 3600


def test_a_fail_closed_tenant_is_refused_while_redis_is_down() -> None:
    closed = TenantLimits(budget_usd=1.0, budget_when_unavailable="refuse")
    opened = TenantLimits(budget_usd=1.0)

    async def body(client: aioredis.Redis) -> LlmqError:
        budgets = Budgets(client)
        await budgets.reserve("open", opened, _hold(0.1, time.time()))
        with pytest.raises(LlmqError) as caught:
            await budgets.reserve("closed", closed, _hold(0.1, time.time()))
        return caught.value

    error = _run_with(lambda: aioredis.Redis(port=free_block(1), retry=Retry(NoBackoff(), 0)), body)
    assert error.code is ErrorCode.BUDGET_UNAVAILABLE
    assert error.code.retriable
    assert "budget_when_unavailable = refuse" in error.message


# Budget alerts


class Published:
    """What the stream processors would publish: (topic, key, value), or a broker failure."""

    def __init__(self, fail: int = 0) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []
        self.fail = fail

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        if self.fail:
            self.fail -= 1
            raise KafkaTimeoutError("no broker")
        self.records.append((topic, key, value))


def test_each_threshold_is_reported_once_per_period_across_instances(redis_port: int) -> None:
    at = _noon()
    limits = TenantLimits(budget_usd=1.0)
    sent = Published(fail=1)

    async def body(client: aioredis.Redis) -> None:
        one, two = BudgetAlerts(client, sent), BudgetAlerts(client, sent)
        with pytest.raises(KafkaTimeoutError):
            await one.spent("acme", limits, 0.55, at)  # not sent: tried again next time
        for spent in (0.55, 0.6, 0.79):
            await asyncio.gather(
                one.spent("acme", limits, spent, at), two.spent("acme", limits, spent, at)
            )
        await asyncio.gather(
            one.spent("acme", limits, 0.9, at), two.spent("acme", limits, 0.95, at)
        )
        await one.exhausted("acme", limits, 0.95, at)
        await two.exhausted("acme", limits, 0.95, at)
        await one.spent("acme", limits, 0.6, at + 86_400)  # the next day: a new period

    _run(redis_port, body)
    alerts = [BudgetAlert.model_validate_json(value) for topic, _, value in sent.records]
    assert {topic for topic, _, _ in sent.records} == {ALERTS}
    assert [(a.threshold, a.period_id) for a in alerts] == [
        (0.5, period_id("day", at)),
        (0.8, period_id("day", at)),
        (1.0, period_id("day", at)),
        (0.5, period_id("day", at + 86_400)),
    ]
    assert alerts[0].spent_usd == 0.55 and alerts[0].reason == "spend"
    assert alerts[2].reason.startswith("a request was refused")
