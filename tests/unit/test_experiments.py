"""A/B tests: sticky arms by hashing, routes that carry the arm, catalog checks, the cost of
a request across its generations, and the intervals the comparison reports."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from schemas.catalog import Catalog
from schemas.request import InferenceRequest
from schemas.result import InferenceResult
from schemas.route import Route
from schemas.work import WorkItem
from streams.experiment_stats import LATENCY_EDGES_MS, ExperimentStats, latency_bucket
from streams.experiments import arm_of
from streams.rollups import SEEN_S
from streams.router import plan
from tests.unit.stages import Pipeline, metered, raw_request, result_of
from tools.intervals import histogram_quantile, mean_interval, quantile_interval, wilson

MODELS = [
    {"name": "small", "source": "/m/small", "tier": 1, "fallback": ["backup"]},
    {"name": "big", "source": "/m/big", "tier": 2},
    {"name": "backup", "source": "/m/backup", "tier": 1},
]


def _catalog(*experiments: Mapping[str, object]) -> Catalog:
    return Catalog.model_validate(
        {"default": "small", "models": MODELS, "experiments": list(experiments)}
    )


SPLIT: dict[str, object] = {
    "name": "size",
    "model": "small",
    "share": 0.4,
    "arms": [{"name": "a", "model": "small"}, {"name": "b", "model": "big", "weight": 3}],
}
ALIAS: dict[str, object] = {
    "name": "alias",
    "model": "chat",
    "arms": [{"name": "a", "model": "small"}, {"name": "b", "model": "auto"}],
}


def _request(tenant: str, model: str) -> InferenceRequest:
    data = json.loads(raw_request())
    return InferenceRequest.model_validate({**data, "tenant": tenant, "model": model})


def test_arms_are_sticky_and_split_by_share_and_weight() -> None:
    experiment = _catalog(SPLIT).experiments[0]
    tenants = [f"t-{i}" for i in range(20_000)]
    arms = [arm_of(experiment, t) for t in tenants]
    assert arms == [arm_of(experiment, t) for t in tenants], "the same tenant, the same arm"
    counts = Counter(None if a is None else a.name for a in arms)
    assert counts[None] / len(tenants) == pytest.approx(0.6, abs=0.02)
    assert counts["b"] / (counts["a"] + counts["b"]) == pytest.approx(0.75, abs=0.02)


def test_ramping_the_share_up_keeps_every_arm_of_a_tenant_already_in() -> None:
    before, after = (_catalog({**SPLIT, "share": share}).experiments[0] for share in (0.5, 0.6))
    arms = [(arm_of(before, t), arm_of(after, t)) for t in (f"t-{i}" for i in range(10_000))]
    assert sum(old is not None for old, _ in arms) > 4_000
    assert all(new == old for old, new in arms if old is not None)
    counts = Counter(new.name for _, new in arms if new is not None)
    assert counts["b"] / (counts["a"] + counts["b"]) == pytest.approx(0.75, abs=0.03)


def test_the_route_serves_the_arm_and_says_which() -> None:
    catalog = _catalog(SPLIT)
    experiment = catalog.experiments[0]
    tenant = next(f"t-{i}" for i in range(100) if arm_of(experiment, f"t-{i}") is not None)
    outside = next(f"t-{i}" for i in range(100) if arm_of(experiment, f"t-{i}") is None)
    arm = arm_of(experiment, tenant)
    assert arm is not None
    route = plan(_request(tenant, "small"), catalog)
    assert (route.requested, route.experiment, route.arm) == ("small", "size", arm.name)
    assert route.chain[0] == arm.model
    assert route.cached_as == f"small/size/{arm.name}"
    plain = plan(_request(outside, "small"), catalog)
    assert (plain.chain, plain.experiment, plain.cached_as) == (["small", "backup"], None, "small")


def test_a_request_with_logit_bias_is_served_by_the_model_it_names() -> None:
    catalog = _catalog(SPLIT)
    tenant = next(f"t-{i}" for i in range(100) if arm_of(catalog.experiments[0], f"t-{i}"))
    request = _request(tenant, "small")
    biased = request.model_copy(
        update={"body": request.body.model_copy(update={"logit_bias": {5: -100.0}})}
    )
    route = plan(biased, catalog)
    assert (route.chain, route.experiment, route.arm) == (["small"], None, None)


def test_a_name_of_the_experiments_own_is_requestable_and_served_by_its_arms() -> None:
    catalog = _catalog(ALIAS)
    assert catalog.requestable == ["small", "big", "backup", "auto", "chat"]
    assert catalog.serving("chat") == ["small", "big", "backup"], "an arm is auto"
    assert catalog.serving("big") == ["big"]
    routes = {plan(_request(f"t-{i}", "chat"), catalog).arm for i in range(50)}
    assert routes == {"a", "b"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arms": [{"name": "a", "model": "small"}, {"name": "a", "model": "big"}]}, "repeats"),
        ({"arms": [{"name": "a", "model": "small"}, {"name": "b", "model": "huge"}]}, "unknown"),
        ({"model": "chat", "share": 0.5}, "share must be 1"),
    ],
)
def test_a_wrong_experiment_is_refused_at_load(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _catalog({**SPLIT, **change})


def test_two_experiments_may_not_split_one_model() -> None:
    with pytest.raises(ValidationError, match="same model"):
        _catalog(SPLIT, {**SPLIT, "name": "other"})


def test_a_result_costs_what_all_its_generations_cost() -> None:
    catalog = Catalog.model_validate(
        {"default": "small", "routing": {"escalate_below": -1.0}, "models": MODELS}
    )
    harness = Pipeline(catalog=catalog)
    data = json.loads(raw_request(temperature=0))
    harness.on_request(None, json.dumps({**data, "model": "auto"}).encode())
    work = WorkItem.model_validate_json(harness.send.sent.pop().value)
    unsure = metered(work, 0.25).model_copy(update={"mean_logprob": -3.0})
    harness.on_completion(unsure.model_dump_json().encode())
    escalated = WorkItem.model_validate_json(harness.send.sent.pop().value)
    assert escalated.spent_usd == 0.25
    harness.on_completion(metered(escalated, 0.5).model_dump_json().encode())
    [reply] = harness.send.sent
    assert result_of(reply).cost_usd == pytest.approx(0.75)


class _SeenSets:
    """Stands in for Redis running the rollups' script: an id counts once per seen set, and
    each count sets when its seen set expires (`expiries`, epoch seconds)."""

    def __init__(self) -> None:
        self.counted: set[tuple[str, str]] = set()
        self.expiries: list[int] = []

    def register_script(self, script: str) -> Callable[..., Awaitable[None]]:
        async def add(keys: list[str], args: list[object]) -> None:
            self.counted.add((keys[1], str(args[0])))
            self.expiries.append(int(str(args[2])))

        return add


def test_equal_correlation_ids_of_two_tenants_are_two_answers() -> None:
    route = Route(requested="small", chain=["small"], experiment="size", arm="a")
    seen = _SeenSets()
    stats = ExperimentStats(cast(aioredis.Redis, seen))
    for tenant in ("acme", "globex", "acme"):  # the last is acme's redelivered answer
        result = InferenceResult(
            correlation_id="req-1", tenant=tenant, status="ok", route=route, finished_at=1e9
        )
        asyncio.run(stats.answered(result))
    assert len(seen.counted) == 2


def test_an_answer_counted_late_is_remembered_from_when_it_is_counted() -> None:
    """An answer finished more than SEEN_S before it is counted (a backlog, a replay) set its
    seen set to expire in the past: Redis dropped the set at once, and a replay counted the
    answer again."""
    route = Route(requested="small", chain=["small"], experiment="size", arm="a")
    seen = _SeenSets()
    stats = ExperimentStats(cast(aioredis.Redis, seen))
    result = InferenceResult(
        correlation_id="req-1", tenant="acme", status="ok", route=route, finished_at=1e9
    )
    counted_at = int(time.time())
    asyncio.run(stats.answered(result))
    assert seen.expiries[0] >= counted_at + SEEN_S


def test_a_latency_lands_in_the_bucket_whose_edge_bounds_it() -> None:
    for ms in (0.2, 1.0, 1.05, 17.3, 999.0, 5e5, 7.2e6, 1e8, 1e9):
        i = latency_bucket(ms)
        assert i == len(LATENCY_EDGES_MS) or ms <= LATENCY_EDGES_MS[i]
        assert i == 0 or ms > LATENCY_EDGES_MS[i - 1]
    assert latency_bucket(1e9) == len(LATENCY_EDGES_MS)  # above the last edge, not in its bucket


def test_a_histograms_quantiles_and_their_intervals_bound_the_truth() -> None:
    values = [10 * 1.01**k for k in range(600)]  # 10 ms to about 3.9 s
    counts = [0.0] * len(LATENCY_EDGES_MS)
    for v in values:
        counts[latency_bucket(v)] += 1
    for q in (0.5, 0.95):
        true = sorted(values)[math.ceil(q * len(values)) - 1]
        assert histogram_quantile(counts, LATENCY_EDGES_MS, q) == pytest.approx(true, rel=0.06)
        low, high = quantile_interval(counts, LATENCY_EDGES_MS, q)
        assert high is not None and low <= true <= high


def test_intervals_of_a_mean_and_a_proportion() -> None:
    """Student's t with 3 degrees of freedom (3.182), not the normal's 1.96; one value has no
    spread to judge by, so no interval (it was a zero-width one that never held the truth)."""
    values = [1.0, 2.0, 3.0, 4.0]
    interval = mean_interval(sum(values), sum(v * v for v in values), len(values))
    half = 3.182 * math.sqrt((5 / 3) / 4)
    assert interval == pytest.approx((2.5 - half, 2.5 + half))
    assert mean_interval(0.3, 0.09, 1) is None
    assert wilson(0, 40)[0] == 0.0 and 0.08 < wilson(0, 40)[1] < 0.09
