"""Admission on the real stack: tenant rate limits and budgets (tenants.toml in conftest.py),
prompt compression metered as tokens saved, and the semantic cache end to end."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, cast

import pytest
import redis

from llmq.aio import AsyncClient
from llmq.cli import main
from llmq.client import Client, tail
from schemas.alerts import BudgetAlert
from schemas.errors import ErrorCode
from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.names import ALERTS, METERING, REDIS_SEMANTIC_PREFIX, spend_key
from schemas.request import CacheMode
from schemas.result import CacheStatus, InferenceResult
from schemas.settings import ServiceSettings
from schemas.tenants import period_end
from tests.integration.helpers import collect, metric
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


MIDNIGHT_MARGIN_S = 300
"""How long a budget test takes at most: one that would end past UTC midnight, when daily
budgets reset, waits for the new day to start instead."""


def _clear_of_midnight() -> None:
    """Wait for the new UTC day when the current one ends within MIDNIGHT_MARGIN_S."""
    left_s = period_end("day", time.time()) - time.time()
    if left_s < MIDNIGHT_MARGIN_S:
        time.sleep(left_s + 1)


def _ask(client: Client, tenant: str, prompt: str = "Say yes.") -> str:
    return client.submit(prompt, tenant=tenant, max_tokens=4, temperature=0.0, cache=CacheMode.OFF)


def test_a_tenant_over_its_rate_limit_is_told_which_limit_and_when_to_retry(
    client: Client,
) -> None:
    ids = [_ask(client, "limited") for _ in range(5)]
    results = [client.result(cid, timeout=300) for cid in ids]
    refused = [r for r in results if r.status == "error"]
    # A full bucket admits 3 at once. Which 3 is not fixed: the records are keyed by their
    # correlation ids, so they land on different partitions, admitted in any order.
    assert len(refused) == 2, [r.error for r in refused]
    for result in refused:
        assert result.error is not None
        assert result.error.code is ErrorCode.RATE_LIMITED
        assert result.error.retriable
        assert "requests_per_minute is a bucket of 3," in result.error.message
        assert result.error.retry_after_s is not None and 0 < result.error.retry_after_s <= 60


def test_a_suspended_tenant_is_refused_with_no_wait(client: Client) -> None:
    """Budget 0: told it is suspended, not to retry at the reset (it would be refused again)."""
    result = client.result(_ask(client, "suspended"), timeout=120)
    assert result.error is not None
    assert result.error.code is ErrorCode.BUDGET_EXCEEDED
    assert "is suspended: its budget_usd is 0" in result.error.message
    assert result.error.retry_after_s is None


@pytest.mark.timeout(600 + MIDNIGHT_MARGIN_S)
def test_metered_spend_closes_the_budget(client: Client) -> None:
    _clear_of_midnight()
    first = client.result(_ask(client, "frugal"), timeout=300)
    assert first.status == "ok", "nothing spent yet"
    # The spend arrives through llmq.metering; admission refuses once it is counted.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = client.result(_ask(client, "frugal"), timeout=300)
        if result.status == "error":
            break
        time.sleep(0.5)
    assert result.error is not None, "the budget never closed"
    assert result.error.code is ErrorCode.BUDGET_EXCEEDED
    assert "daily budget" in result.error.message


@pytest.mark.timeout(600 + MIDNIGHT_MARGIN_S)
def test_a_burst_never_spends_past_the_budget(
    client: Client, stack: LocalStack, service_settings: ServiceSettings
) -> None:
    """200 requests at once from a tenant whose budget fits about 50, half of them streamed
    and a quarter on the batch lane: each holds its worst case at admission, so the metered
    spend stays within the budget and the rest are refused, saying why; every hold is
    released once answered."""
    _clear_of_midnight()
    budget = 0.0001
    metering = tail(service_settings.kafka_bootstrap, METERING)
    alerts = tail(service_settings.kafka_bootstrap, ALERTS)
    ids = [
        client.submit(
            f"Count to ten. ({i})",
            tenant="capped",
            max_tokens=16,
            ignore_eos=True,  # every answer costs the same, whenever the model would stop
            stream=i % 2 == 1,
            lane=Lane.BATCH if i % 4 == 2 else Lane.STANDARD,
            cache=CacheMode.OFF,
        )
        for i in range(200)
    ]
    results = [client.result(cid, timeout=300) for cid in ids]
    served = [r for r in results if r.status == "ok"]
    refused = [r for r in results if r.error is not None]
    assert len(served) + len(refused) == 200
    assert all(r.error.code is ErrorCode.BUDGET_EXCEEDED for r in refused if r.error)
    assert all("daily budget" in r.error.message for r in refused if r.error)
    assert 10 <= len(served) < 100, f"{len(served)} served: the burst was not capped"
    served_ids = {r.correlation_id for r in served}
    records = collect(
        metering,
        done=lambda rs: served_ids <= {_event(r.value).correlation_id for r in rs},
        timeout_s=60,
    )
    metering.close()
    spent = sum(e.cost_usd for e in map(_event, (r.value for r in records)) if e.tenant == "capped")
    store = redis.Redis.from_url(stack.settings.redis_url)
    try:
        held = cast("bytes | None", store.get(spend_key("capped", "held")))
    finally:
        store.close()
    print(f"\n{len(served)} of 200 served, ${spent:.7f} metered of the ${budget} budget")
    assert 0 < spent <= budget
    assert held is not None and int(held) == 0, "every answered request released its hold"
    # Every threshold the spend crossed is reported once on llmq.alerts.
    crossed = {t for t in (0.5, 0.8) if spent >= t * budget - 1e-12}
    found = collect(
        alerts,
        done=lambda rs: crossed <= {_alert(r.value).threshold for r in rs},
        timeout_s=30,
    )
    alerts.close()
    reported = [_alert(r.value).threshold for r in found if _alert(r.value).tenant == "capped"]
    assert sorted(t for t in reported if t < 1) == sorted(crossed)


def _alert(value: bytes | None) -> BudgetAlert:
    return BudgetAlert.model_validate_json(value or b"")


def _event(value: bytes | None) -> MeteringEvent:
    return MeteringEvent.model_validate_json(value or b"")


def test_costs_show_the_spend_and_what_the_cache_saved(
    client: Client,
    stack: LocalStack,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A question asked twice: the first is generated, the second comes from the exact
    cache and saves what the first cost; `llmq costs` reads both from the rollups."""
    tenant = f"ledger-{uuid.uuid4().hex[:6]}"
    first = client.ask("Name a colour.", tenant=tenant, max_tokens=8, temperature=0.0)
    second = client.ask("Name a colour.", tenant=tenant, max_tokens=8, temperature=0.0)
    assert (first.cache, second.cache) == (CacheStatus.NONE, CacheStatus.EXACT)
    monkeypatch.setenv("LLMQ_REDIS_URL", stack.settings.redis_url)
    deadline = time.monotonic() + 60
    while True:
        # two days: the answers may fall before midnight and this report after it
        assert main(["costs", "--days", "2", "--tenant", tenant, "--by", "cache", "--json"]) == 0
        lines = {x["key"]["cache"]: x for x in json.loads(capsys.readouterr().out)["lines"]}
        if {"none", "exact"} <= set(lines) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(lines) == {"none", "exact"}, "both answers are in the rollups"
    assert lines["none"]["count"] == 1 and lines["exact"]["count"] == 1
    assert lines["none"]["cost_usd"] > 0
    assert lines["exact"]["saved_usd"] == pytest.approx(lines["none"]["cost_usd"])
    assert lines["exact"]["cost_usd"] == 0


def test_compression_saves_prompt_tokens_and_meters_them(
    client: Client, service_settings: ServiceSettings
) -> None:
    metering = tail(service_settings.kafka_bootstrap, METERING)
    padded = "What    is   the    capital   of    France?   \n\n\n\n\n   Answer    briefly.   "
    cid = client.submit(padded, max_tokens=16, temperature=0.0, cache=CacheMode.OFF)
    result = client.result(cid, timeout=300)
    assert result.status == "ok", result.error
    records = collect(
        metering,
        done=lambda rs: any(
            MeteringEvent.model_validate_json(r.value).correlation_id == cid for r in rs
        ),
        timeout_s=30,
    )
    metering.close()
    [event] = [
        e
        for e in (MeteringEvent.model_validate_json(r.value) for r in records)
        if e.correlation_id == cid
    ]
    assert event.prompt_tokens_saved > 0
    before = event.prompt_tokens + event.prompt_tokens_saved
    print(f"\ncompression saved {event.prompt_tokens_saved} of {before} prompt tokens")


def test_a_paraphrase_is_answered_by_the_semantic_cache(client: Client, stack: LocalStack) -> None:
    ref = uuid.uuid4().hex[:8]
    streams, worker = stack.settings.metrics_base_port, stack.settings.metrics_base_port + 1
    # ignore_eos: each generation runs its 160 tokens (some 5 s here, a second on a fast
    # GPU), so the paraphrase's speculative generation is still running when the cache
    # answers it (tens of milliseconds) and its cancellation reaches the worker.
    ask = {"max_tokens": 160, "temperature": 0.0, "ignore_eos": True}
    learned = _semantic_entries(stack)
    first = client.ask(f"What is the capital of France? (ref {ref})", **ask)
    _learns(stack, learned)
    generations = metric(worker, "llmq_worker_generations_total", outcome="ok")
    superseded = metric(worker, "llmq_worker_generations_total", outcome="superseded")
    hits = metric(streams, "llmq_streams_speculations_total", outcome="hit")
    second = client.ask(f"what's the capital of france, ref {ref}??", **ask)
    assert first.cache is CacheStatus.NONE
    assert second.cache is CacheStatus.SEMANTIC
    assert second.text == first.text
    assert metric(streams, "llmq_streams_speculations_total", outcome="hit") == hits + 1
    # Sent to the engine while the cache was looked up, then cancelled as answered.
    deadline = time.monotonic() + 30
    while (
        metric(worker, "llmq_worker_generations_total", outcome="superseded") == superseded
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert metric(worker, "llmq_worker_generations_total", outcome="superseded") == superseded + 1
    assert metric(worker, "llmq_worker_generations_total", outcome="ok") == generations
    assert client.result(second.correlation_id or "", timeout=5) == second, "still the one answer"
    near_miss = client.ask(f"What is the capital of Germany? (ref {ref})", **ask)
    assert near_miss.cache is CacheStatus.NONE, "a close wording with another answer must not hit"


def test_a_streamed_paraphrase_gets_one_answer_whoever_claims_it_first(
    service_settings: ServiceSettings, client: Client, stack: LocalStack
) -> None:
    """A streamed request's generation races the cache's lookup to its first tokens: either
    the cache answers (one piece) or the engine does (its pieces), never both."""
    ref = uuid.uuid4().hex[:8]
    streams = stack.settings.metrics_base_port
    ask: dict[str, Any] = {"max_tokens": 24, "temperature": 0.0, "ignore_eos": True}
    learned = _semantic_entries(stack)
    first = client.ask(f"How do you boil an egg? (ref {ref})", **ask)
    _learns(stack, learned)
    before = {
        outcome: metric(streams, "llmq_streams_speculations_total", outcome=outcome)
        for outcome in ("hit", "late")
    }

    async def main() -> tuple[list[str], InferenceResult]:
        async with AsyncClient(service_settings) as app:
            cid = await app.submit(f"how do you boil an egg? ref {ref}", stream=True, **ask)
            pieces = [piece.text async for piece in app.follow(cid)]
            return pieces, await app.result(cid, wait_s=60)

    pieces, result = asyncio.run(main())
    after = {
        outcome: metric(streams, "llmq_streams_speculations_total", outcome=outcome)
        for outcome in ("hit", "late")
    }
    assert "".join(pieces) == result.text, "the pieces read are the answer kept"
    if after["hit"] == before["hit"] + 1:
        assert (result.cache, pieces) == (CacheStatus.SEMANTIC, [first.text])
    else:
        assert after["late"] == before["late"] + 1
        assert result.cache is CacheStatus.NONE
    print(f"\nstreamed paraphrase answered by: {result.cache.value}, in {len(pieces)} pieces")


def _learns(stack: LocalStack, entries: int) -> None:
    """Wait until the semantic cache holds more than `entries` questions: it learns one in
    the background, after replying."""
    deadline = time.monotonic() + 30
    while _semantic_entries(stack) == entries and time.monotonic() < deadline:
        time.sleep(0.1)


def _semantic_entries(stack: LocalStack) -> int:
    """Entries across the semantic cache's streams in Redis."""
    store = redis.Redis.from_url(stack.settings.redis_url)
    try:
        keys = store.scan_iter(f"{REDIS_SEMANTIC_PREFIX}*")
        return sum(cast("int", store.xlen(key)) for key in keys)
    finally:
        store.close()
