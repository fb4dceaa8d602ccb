"""Budgets against a real redis-server of this module's own (no Kafka, no engine): spend
counted once per event, holds from admission to the answer, expiry, the refusals' messages,
fail-closed, and alerts reported once per threshold and period."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
import redis
import redis.asyncio as aioredis
from kafka.errors import KafkaTimeoutError
from prometheus_client import REGISTRY
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from schemas.alerts import BudgetAlert
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.names import ALERTS
from schemas.result import InferenceResult
from schemas.tenants import BudgetPeriod, TenantLimits, TenantPolicy, period_end, period_id
from schemas.work import WorkItem
from streams.budget import (
    HOLD_AFTER_DEADLINE_S,
    HOLD_S,
    KEEP_AFTER_PERIOD_S,
    Budgets,
    Hold,
    worst_case,
)
from streams.budget_alerts import BudgetAlerts
from streams.gate import TenantGate
from streams.ratelimit import RateLimiter
from tests.integration.helpers import run_async, run_with
from tests.unit.stages import FailingSend, FakeSend, admitted, raw_request
from tools.stack.ports import free_block

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]


def test_recording_spend_with_redis_down_raises() -> None:
    async def body(client: aioredis.Redis) -> None:
        with pytest.raises(RedisError):
            await Budgets(client).record(_event("acme", "c-1", 0.1, time.time()))

    run_with(lambda: aioredis.Redis(port=free_block(1), retry=Retry(NoBackoff(), 0)), body)


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


def _recent() -> float:
    """Now, kept an hour clear of the day's boundaries: a hold's keys expire by Redis's own
    clock (HOLD_S after the hold's `now`), so a test that holds must hold at a recent time,
    not at noon (its holds were gone by 18:00 UTC)."""
    now = datetime.now(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return min(max(now, day + timedelta(hours=1)), day + timedelta(hours=23)).timestamp()


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

    error = run_async(redis_port, body)
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

    outcomes = run_async(redis_port, body)
    assert outcomes == [True] + [False] * 20


def test_monthly_budgets_sum_the_days_and_old_or_free_events_are_skipped(redis_port: int) -> None:
    today = _noon()
    earlier = _noon(days_ago=1)  # this month's, or last month's on the 1st: both still count
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

    run_async(redis_port, body)


# Budget holds


def test_concurrent_requests_hold_their_worst_case_and_never_pass_the_budget(
    redis_port: int,
) -> None:
    """200 requests at once, each holding $0.03 of a $1.00 budget: 33 fit. Each then costs
    $0.02, so settling and releasing them leaves room for 11 more at $0.03."""
    at = _recent()
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

    first, second, held_before, spent = run_async(redis_port, body)
    assert len(first) == 33
    assert held_before == pytest.approx(0.99)
    assert spent == pytest.approx(0.66)
    assert len(second) == 11


def test_metering_moves_cost_from_the_hold_to_the_spend_once(redis_port: int) -> None:
    """The same event may come inside its completion and on llmq.metering: one settles."""
    at = _recent()
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

    assert run_async(redis_port, body) == pytest.approx([0.5, 0.3, 0.2, 0.0, 0.6])


def test_a_released_or_expired_hold_frees_the_budget(redis_port: int, sync: redis.Redis) -> None:
    at = _recent()
    limits = TenantLimits(budget_usd=1.0)

    async def body(client: aioredis.Redis) -> list[str]:
        budgets = Budgets(client)
        first = await budgets.reserve("acme", limits, _hold(0.6, at, "c-1"), now=at)
        again = await budgets.reserve("acme", limits, _hold(0.6, at, "c-1"), now=at)  # redelivered
        assert first is not None and first.placed
        assert again is not None and not again.placed, "admitted on the hold it placed before"
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

    messages = run_async(redis_port, body)
    assert messages[0] == (
        "tenant acme has spent $0.00 of its $1.00 daily budget, and requests in flight may cost "
        "up to $0.6 more; this one may cost up to $0.6, so it must wait for them to finish"
    )
    assert sync.hkeys("llmq:spend:{acme}:holds") == [b"c-5"]
    assert cast(int, sync.ttl("llmq:spend:{acme}:held")) > 0


def test_the_same_id_sent_again_and_refused_leaves_its_requests_hold(redis_port: int) -> None:
    """A record under the id of a request in flight is admitted on the hold its first record
    placed; refused by a rate limit (its content is another's: the same one would pass, see
    test_admission_redis), it must not free that hold."""
    catalog = Catalog.builtin()
    work = admitted(raw_request("c-1"))
    hold = worst_case(work, catalog).usd
    policy = TenantPolicy(default=TenantLimits(budget_usd=1.0, requests_per_minute=1))

    async def body(client: aioredis.Redis) -> float:
        budgets = Budgets(client)
        gate = TenantGate(policy, RateLimiter(client), budgets, catalog)
        await gate.check(work)
        with pytest.raises(LlmqError) as caught:
            await gate.check(admitted(raw_request("c-1", max_tokens=8)))
        assert caught.value.code is ErrorCode.RATE_LIMITED
        return await budgets.held("acme")

    assert run_async(redis_port, body) == pytest.approx(hold, rel=1e-3)


class SettleFails(Budgets):
    """Budgets whose first `failures` settles fail, as during a blip of Redis."""

    def __init__(self, client: aioredis.Redis, failures: int) -> None:
        super().__init__(client)
        self.failures = failures

    async def settle(self, event: MeteringEvent) -> dict[BudgetPeriod, float] | None:
        if self.failures:
            self.failures -= 1
            raise RedisError("a blip")
        return await super().settle(event)


@pytest.mark.parametrize(
    ("settles", "failures"), [(1, 1), (2, 3)], ids=["settled-at-release", "kept-held"]
)
def test_an_answer_whose_cost_was_not_counted_does_not_free_it(
    redis_port: int, settles: int, failures: int
) -> None:
    """Its settling failed (`settles` times: a redelivered completion comes again): the
    release settles it first, or, failing again, keeps its cost held, once, until
    llmq.metering counts it (released, the budget would admit into that room)."""
    catalog = Catalog.builtin()
    work = admitted(raw_request("c-1"))
    hold = worst_case(work, catalog).usd
    cost = hold / 2
    policy = TenantPolicy(default=TenantLimits(budget_usd=1.0))
    at = time.time()

    async def body(client: aioredis.Redis) -> list[float]:
        budgets = SettleFails(client, failures)
        gate = TenantGate(policy, RateLimiter(client), budgets, catalog)
        await gate.check(work)
        event = _event("acme", "c-1", cost, at)
        for _ in range(settles):
            await gate.settle(event)
        await gate.release(InferenceResult(correlation_id="c-1", tenant="acme", status="ok"))
        seen = [await budgets.held("acme"), await budgets.spent("acme", "day", at)]
        await budgets.record(event)  # llmq.metering's try: counted once either way
        return [*seen, await budgets.held("acme"), await budgets.spent("acme", "day", at)]

    held, spent, held_after, spent_after = run_async(redis_port, body)
    assert (held_after, spent_after) == pytest.approx((0.0, cost))
    if failures == settles:
        assert (held, spent) == pytest.approx((0.0, cost))
    else:
        assert (held, spent) == pytest.approx((cost, 0.0), rel=1e-3)


def test_a_request_that_cannot_fit_says_to_lower_max_tokens(redis_port: int) -> None:
    at = _noon()

    async def body(client: aioredis.Redis) -> LlmqError:
        with pytest.raises(LlmqError) as caught:
            await Budgets(client).reserve(
                "acme", TenantLimits(budget_usd=0.5), _hold(0.75, at), now=at
            )
        return caught.value

    error = run_async(redis_port, body)
    assert error.code is ErrorCode.BUDGET_EXCEEDED
    assert "may cost up to $0.75" in error.message and "lower max_tokens" in error.message
    assert error.retry_after_s is None, "no wait helps: the Batch API resent it at the reset"


def test_a_request_that_fits_once_spend_resets_says_when(redis_port: int) -> None:
    at = _noon()

    async def body(client: aioredis.Redis) -> LlmqError:
        budgets = Budgets(client)
        assert await budgets.record(_event("acme", "c-0", 0.3, at))
        with pytest.raises(LlmqError) as caught:
            await budgets.reserve("acme", TenantLimits(budget_usd=0.5), _hold(0.25, at), now=at)
        return caught.value

    error = run_async(redis_port, body)
    assert "lower max_tokens, or wait until it resets" in error.message
    assert error.retry_after_s == 12 * 3600


def test_a_sum_of_holds_whose_holds_lapsed_frees_the_budget(
    redis_port: int, sync: redis.Redis
) -> None:
    """The holds' keys expired (a release lost) while the sum's key, set to outlive an
    earlier longer hold, stayed: the sum kept the lapsed amount, and refused the tenant for
    as long as it kept sending."""
    at = _recent()
    limits = TenantLimits(budget_usd=1.0)

    async def body(client: aioredis.Redis) -> float:
        budgets = Budgets(client)
        await budgets.reserve("acme", limits, _hold(0.6, at, "lost"), now=at)
        sync.delete("llmq:spend:{acme}:holds", "llmq:spend:{acme}:holds:until")  # their expiry
        await budgets.reserve("acme", limits, _hold(0.6, at, "next"), now=at)
        return await budgets.held("acme")

    assert run_async(redis_port, body) == pytest.approx(0.6)


def test_a_budgeted_request_without_a_deadline_gets_its_holds_life_as_one(
    redis_port: int, sync: redis.Redis
) -> None:
    """Queued past its hold's expiry (a pool down for hours), it was generated on a hold
    the budget no longer counted, which had admitted others into its room: 1.8x the budget
    spent in a reproduction. Now it expires in its queue instead."""
    catalog = Catalog.builtin()
    work = admitted(raw_request("c-1"))
    assert work.request.deadline is None
    budgeted = TenantPolicy(default=TenantLimits(budget_usd=1.0))
    unlimited = TenantPolicy(default=TenantLimits())

    async def body(client: aioredis.Redis) -> tuple[WorkItem, WorkItem]:
        budgets = Budgets(client)
        sent = await TenantGate(budgeted, RateLimiter(client), budgets, catalog).check(work)
        free = await TenantGate(unlimited, RateLimiter(client), budgets, catalog).check(work)
        return sent, free

    before = time.time()
    sent, free = run_async(redis_port, body)
    assert free.request.deadline is None, "a tenant without a budget keeps its terms"
    deadline = sent.request.deadline
    assert deadline is not None and before + HOLD_S <= deadline <= time.time() + HOLD_S
    until = sync.zscore("llmq:spend:{acme}:holds:until", "c-1")
    assert until == pytest.approx(deadline + HOLD_AFTER_DEADLINE_S)


def test_a_fail_closed_tenant_is_refused_while_redis_is_down() -> None:
    closed = TenantLimits(budget_usd=1.0, budget_when_unavailable="refuse")
    opened = TenantLimits(budget_usd=1.0)

    async def body(client: aioredis.Redis) -> LlmqError:
        budgets = Budgets(client)
        await budgets.reserve("open", opened, _hold(0.1, time.time()))
        with pytest.raises(LlmqError) as caught:
            await budgets.reserve("closed", closed, _hold(0.1, time.time()))
        return caught.value

    error = run_with(lambda: aioredis.Redis(port=free_block(1), retry=Retry(NoBackoff(), 0)), body)
    assert error.code is ErrorCode.BUDGET_UNAVAILABLE
    assert error.code.retriable
    assert "budget_when_unavailable = refuse" in error.message


# Budget alerts


def test_each_threshold_is_reported_once_per_period_across_instances(redis_port: int) -> None:
    at = _noon()
    limits = TenantLimits(budget_usd=1.0)
    sent = FailingSend("", 1, KafkaTimeoutError("no broker"))  # one broker failure

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
        raised = TenantLimits(budget_usd=2.0)  # by the operator, the same day
        await one.spent("acme", raised, 1.1, at)
        await one.spent("acme", limits, 0.6, at + 86_400)  # the next day: a new period

    run_async(redis_port, body)
    alerts = [BudgetAlert.model_validate_json(record.value) for record in sent.sent]
    assert {record.topic for record in sent.sent} == {ALERTS}
    assert [(a.threshold, a.period_id) for a in alerts] == [
        (0.5, period_id("day", at)),
        (0.8, period_id("day", at)),
        (1.0, period_id("day", at)),
        (0.5, period_id("day", at)),
        (0.5, period_id("day", at + 86_400)),
    ]
    assert alerts[3].budget_usd == 2.0
    assert alerts[0].spent_usd == 0.55 and alerts[0].reason == "spend"
    assert alerts[2].reason.startswith("a request was refused")


@pytest.mark.parametrize(
    ("tenant", "spent_share", "hold_share", "used_up"),
    [("used-up", 0.85, 0.2, True), ("oversize", 0.1, 2.0, False)],
    ids=["cannot-fit-at-85-percent", "larger-than-the-budget-at-10-percent"],
)
def test_a_refusal_past_80_percent_spent_reports_the_budget_used_up(
    redis_port: int, tenant: str, spent_share: float, hold_share: float, used_up: bool
) -> None:
    """Refused at 85% spent, as what is left cannot pay for its worst case, the tenant has
    used its budget up though its spend stays below it (holds stop it short): alerted at
    threshold 1, its gauge at 1. Refused at 10% spent for costing more than the whole
    budget, the request is the problem: no alert."""
    catalog = Catalog.builtin()
    work = admitted(raw_request("c-1"))
    work = work.model_copy(update={"request": work.request.model_copy(update={"tenant": tenant})})
    budget = worst_case(work, catalog).usd / hold_share
    policy = TenantPolicy(default=TenantLimits(budget_usd=budget))
    sent = FakeSend()

    async def body(client: aioredis.Redis) -> None:
        budgets = Budgets(client)
        alerts = BudgetAlerts(client, sent)
        gate = TenantGate(policy, RateLimiter(client), budgets, catalog, alerts)
        assert await budgets.record(_event(tenant, "c-0", spent_share * budget, time.time()))
        with pytest.raises(LlmqError) as caught:
            await gate.check(work)
        assert caught.value.code is ErrorCode.BUDGET_EXCEEDED

    run_async(redis_port, body)
    alerts = [BudgetAlert.model_validate_json(record.value) for record in sent.sent]
    used = REGISTRY.get_sample_value("llmq_budget_used_ratio", {"tenant": tenant})
    if not used_up:
        assert (alerts, used) == ([], None)
        return
    assert [(a.tenant, a.threshold, a.budget_usd) for a in alerts] == [(tenant, 1.0, budget)]
    assert alerts[0].spent_usd == pytest.approx(spent_share * budget)
    assert alerts[0].reason.startswith("a request was refused")
    assert used == 1.0
