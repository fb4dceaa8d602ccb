"""A completion read again (a crash or a rebalance before its offset was committed) hands its
work on once, with the real budgets and marks of a redis-server of this module's own (no
Kafka, no engine): a second escalation or retry would generate again, at a cost that no hold
covers, after the first one's answer released the request's hold."""

from __future__ import annotations

import json
import math
import time
from typing import cast

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from llmq.pipelined import Pipelined
from schemas.catalog import Catalog
from schemas.names import REDIS_HANDED_PREFIX, REQUESTS_KEYED, WORK_PREFIX
from schemas.tenants import TenantLimits, TenantPolicy
from schemas.work import Completion, WorkItem
from streams.budget import Budgets, Hold, worst_case
from streams.coalesce import Coalescer
from streams.gate import TenantGate
from streams.outbox import Ledger, Outbox
from streams.ratelimit import RateLimiter
from streams.settings import StreamSettings
from streams.stages import Stages, build_stages
from streams.store import RedisStore
from tests.integration.helpers import run_async, run_with
from tests.unit.stages import FakeLedger, FakeSend, completion, metered, raw_request
from tools.stack.ports import free_block

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]

CASCADE = Catalog.model_validate(
    {
        "default": "small",
        "routing": {"cascade": True, "escalate_below": -1.0},
        "models": [
            {"name": "small", "source": "/m/s", "tier": 1, "price_completion_per_mtok": 250.0},
            {"name": "big", "source": "/m/b", "tier": 2, "price_completion_per_mtok": 2250.0},
        ],
    }
)
"""400 tokens of output cost at most $0.10 on small, $0.90 on big: $1.00 held in all."""
SOLO = Catalog.model_validate(
    {
        "default": "solo",
        "models": [
            {"name": "solo", "source": "/m/solo", "tier": 1, "price_completion_per_mtok": 1000.0}
        ],
    }
)
"""One model, nothing to fall back to: a failure is retried on it; $0.40 held a request."""
BUDGET = 1.0


class Harness:
    """The stages on a real RedisStore, with the tenant gate as their ledger (or another)."""

    def __init__(self, client: aioredis.Redis, catalog: Catalog, ledger: Ledger | None) -> None:
        self.send = FakeSend()
        store = RedisStore(Pipelined(client), cache_ttl_s=60, result_ttl_s=60)
        outbox = Outbox(store, self.send, ledger)
        retry = StreamSettings().retry_policy()
        self.stages: Stages = build_stages(catalog, outbox, Coalescer({}, stale_after_s=600), retry)

    async def admitted(self, raw: bytes, model: str | None = None) -> WorkItem:
        """The work admission sends for the request, through dedupe as Kafka hands it on."""
        if model is not None:
            raw = json.dumps({**json.loads(raw), "model": model}).encode()
        await self.stages.admission.on_request(None, raw)
        [keyed] = [s for s in self.send.sent if s.topic == REQUESTS_KEYED]
        await self.stages.dedupe.on_keyed(keyed.key, keyed.value)
        [work] = self.work_sent()
        return work

    async def read(self, done: Completion | bytes) -> None:
        """One read of a completion record."""
        raw = done if isinstance(done, bytes) else done.model_dump_json().encode()
        await self.stages.complete.on_completion(None, raw)

    def work_sent(self) -> list[WorkItem]:
        """The work sent since the last look."""
        sent = [s for s in self.send.sent if s.topic.startswith(WORK_PREFIX)]
        self.send.sent.clear()
        return [WorkItem.model_validate_json(s.value) for s in sent]


def _gate(client: aioredis.Redis, catalog: Catalog) -> tuple[TenantGate, Budgets]:
    budgets = Budgets(client)
    policy = TenantPolicy(tenants={"acme": TenantLimits(budget_usd=BUDGET)})
    return TenantGate(policy, RateLimiter(client), budgets, catalog), budgets


def _costing(work: WorkItem, cost: float, mean_logprob: float) -> Completion:
    """The worker's answer to `work`, metered at `cost`, this confident."""
    return metered(work, cost).model_copy(update={"mean_logprob": mean_logprob})


def test_an_unsure_answer_read_again_escalates_once(redis_port: int, sync: redis.Redis) -> None:
    """Tier 1's unsure answer read twice, then again with the escalation's answer after
    both: one escalation, and spend stays within the $1.00 hold and budget. The mark lives
    as long as the hold."""

    async def body(client: aioredis.Redis) -> tuple[Hold, list[str], float, float]:
        gate, budgets = _gate(client, CASCADE)
        harness = Harness(client, CASCADE, gate)
        work = await harness.admitted(raw_request("c1", temperature=0, max_tokens=400), "auto")
        hold = worst_case(work, CASCADE)
        unsure = _costing(work, 0.1, -3.0)
        await harness.read(unsure)
        await harness.read(unsure)  # read again: the first read's offset was not committed
        escalations = harness.work_sent()
        for escalation in escalations:
            sure = _costing(escalation, 0.9, -0.1)
            await harness.read(sure)
            await harness.read(unsure)  # both read again, after the answer released the hold
            await harness.read(sure)
        escalations += harness.work_sent()
        spent = await budgets.spent("acme", "day")
        return hold, [w.model for w in escalations], spent, await budgets.held("acme")

    hold, escalated, spent, held = run_async(redis_port, body)
    assert hold.usd == pytest.approx(BUDGET, rel=1e-3)
    assert escalated == ["big"], "one escalation however often tier 1's answer is read"
    assert spent == pytest.approx(1.0)
    assert spent <= BUDGET
    assert held == 0.0
    [mark] = cast("list[bytes]", sync.keys(f"{REDIS_HANDED_PREFIX}*"))
    assert sync.expiretime(mark.decode()) == math.ceil(hold.until)


def test_a_failure_read_again_is_retried_once(redis_port: int) -> None:
    """Two requests holding $0.40 each of $1.00; the first's engine_error read twice: one
    retry, and both answers' spend stays within the budget."""

    async def body(client: aioredis.Redis) -> tuple[list[int], float, float]:
        gate, budgets = _gate(client, SOLO)
        harness = Harness(client, SOLO, gate)
        first = await harness.admitted(raw_request("c1", temperature=0.7, max_tokens=400))
        second = await harness.admitted(raw_request("c2", temperature=0.7, max_tokens=400))
        failed = completion(first, None)
        await harness.read(failed)
        await harness.read(failed)  # read again: the first read's offset was not committed
        retries = harness.work_sent()
        for i, work in enumerate([*retries, second]):
            done = metered(work, 0.4)
            assert done.metering is not None
            at = done.metering.model_copy(update={"at": time.time() + i})  # an event each
            await harness.read(done.model_copy(update={"metering": at}))
        await harness.read(failed)  # and once more, after its retry answered
        retries += harness.work_sent()
        return [w.attempt for w in retries], await budgets.spent("acme", "day"), BUDGET

    attempts, spent, budget = run_async(redis_port, body)
    assert attempts == [2], "one retry however often the failure is read"
    assert spent == pytest.approx(0.8)
    assert spent <= budget


def test_with_redis_away_a_completion_read_again_hands_on_again() -> None:
    """The marks degrade as the rest of the store: without Redis, the work goes on each
    time (a duplicate generation rather than a request never answered)."""

    async def body(client: aioredis.Redis) -> list[str]:
        harness = Harness(client, CASCADE, FakeLedger())
        work = await harness.admitted(raw_request("c1", temperature=0, max_tokens=400), "auto")
        unsure = _costing(work, 0.1, -3.0)
        await harness.read(unsure)
        await harness.read(unsure)
        return [w.model for w in harness.work_sent()]

    escalated = run_with(
        lambda: aioredis.Redis(port=free_block(1), retry=Retry(NoBackoff(), 0)), body
    )
    assert escalated == ["big", "big"]
