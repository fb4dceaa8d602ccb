"""Cost rollups and `llmq costs` against a real redis-server of this module's own: events
summed per hour once each, then read back as a table, JSON and a plot."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
import redis.asyncio as aioredis

from llmq.cli import main
from llmq.pipelined import Pipelined
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.names import costs_keys
from schemas.request import InferenceRequest
from schemas.result import CacheStatus, InferenceResult, Timings
from schemas.route import Route
from schemas.work import Completion, WorkItem
from streams import replies
from streams.coalesce import Coalescer
from streams.dedupe import fail_copies
from streams.experiment_stats import ExperimentStats
from streams.outbox import Outbox
from streams.rollups import CostRollups, hour_of, read
from streams.savings import saved
from tests.integration.helpers import start_redis, stop_redis
from tests.unit.stages import FakeSend, FakeStore, admitted, answer, raw_request
from tools.costs import experiment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NOON = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
"""Yesterday noon UTC, as the module is collected: its events fall on NOON's day and the next,
and the reports name those two days (`--days` counts back from the day the test runs, which
may be after midnight: CI once collected before it and reported after)."""
DAYS = [
    "--since",
    NOON.date().isoformat(),
    "--until",
    (NOON + timedelta(days=1)).date().isoformat(),
]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    proc, port = start_redis()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_redis(proc)


def _event(
    tenant: str, cost: float, at: datetime, cache: CacheStatus = CacheStatus.NONE, **more: float
) -> MeteringEvent:
    return MeteringEvent(
        correlation_id=f"c-{tenant}-{at.timestamp()}-{cache.value}",
        tenant=tenant,
        model="smollm2-135m",
        lane=Lane.BATCH if tenant == "zeta" else Lane.STANDARD,
        fingerprint="f" * 64,
        prompt_tokens=100 if cache is CacheStatus.NONE else 0,
        completion_tokens=20 if cache is CacheStatus.NONE else 0,
        cost_usd=cost,
        queue_ms=1.0,
        ttft_ms=None,
        engine_ms=3.0,
        worker="w-1",
        cache=cache,
        saved_usd=more.get("saved", 0.0),
        at=at.timestamp(),
    )


EVENTS = [
    _event("acme", 0.25, NOON),
    _event("acme", 0.50, NOON + timedelta(minutes=70)),
    _event("acme", 0.0, NOON + timedelta(minutes=71), CacheStatus.EXACT, saved=0.5),
    _event("acme", 0.0, NOON + timedelta(minutes=72), CacheStatus.COALESCED, saved=0.5),
    _event("zeta", 2.0, NOON + timedelta(hours=12)),  # today 00:00: never in the future
]


@pytest.fixture(scope="module")
def filled(redis_url: str) -> str:
    async def fill() -> list[bool]:
        client = aioredis.Redis.from_url(redis_url)
        rollups = CostRollups(Pipelined(client))
        added = [await rollups.add(e) for e in EVENTS]
        added += await asyncio.gather(*(rollups.add(e.model_copy()) for e in EVENTS))
        await client.aclose()
        return added

    assert asyncio.run(fill()) == [True] * len(EVENTS) + [False] * len(EVENTS)
    return redis_url


def test_an_hour_sums_its_events_once_and_expires_after_a_year(filled: str) -> None:
    async def look() -> tuple[list[str], int]:
        client = aioredis.Redis.from_url(filled)
        hour = hour_of(NOON.timestamp())
        rows = await read(client, [hour])
        expires = cast(int, await client.expiretime(costs_keys(hour)[0]))  # type: ignore[misc]
        await client.aclose()
        return [f"{r.tenant} {r.cache} {r.count:g} {r.cost_usd:g}" for r in rows], expires

    rows, expires = asyncio.run(look())
    assert rows == ["acme none 1 0.25"]
    assert 399 * 86_400 < expires - NOON.timestamp() < 401 * 86_400


def test_the_report_groups_by_what_is_asked(
    filled: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMQ_REDIS_URL", filled)
    assert main(["costs", *DAYS, "--by", "tenant,cache", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    lines = {(x["key"]["tenant"], x["key"]["cache"]): x for x in report["lines"]}
    assert set(lines) == {
        ("acme", "none"),
        ("acme", "exact"),
        ("acme", "coalesced"),
        ("zeta", "none"),
    }
    assert lines["acme", "none"]["cost_usd"] == pytest.approx(0.75)
    assert lines["acme", "none"]["prompt_tokens"] == 200
    assert lines["acme", "exact"]["saved_usd"] == pytest.approx(0.5)
    assert report["total"]["cost_usd"] == pytest.approx(2.75)
    assert report["total"]["saved_usd"] == pytest.approx(1.0)
    assert report["total"]["count"] == len(EVENTS)

    assert main(["costs", *DAYS, "--tenant", "zeta"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("costs from ")
    assert out[1].split() == [
        "day",
        "tenant",
        "model",
        "lane",
        "cache",
        "count",
        "tokens",
        "in",
        "tokens",
        "out",
        "cost",
        "USD",
        "saved",
        "USD",
    ]
    assert "zeta" in out[3] and "batch" in out[3] and "2.00" in out[3]
    assert out[-1].split()[0] == "total"


def test_the_plot_is_drawn(
    filled: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.setenv("LLMQ_REDIS_URL", filled)
    png = tmp_path_factory.mktemp("costs") / "costs.png"
    assert main(["costs", *DAYS, "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_metering_says_so_and_a_bad_grouping_is_refused(
    filled: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMQ_REDIS_URL", filled)
    assert main(["costs", "--tenant", "nobody"]) == 1
    assert "no metering of tenant nobody" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["costs", "--by", "tenant,colour"])
    assert "--by takes distinct names" in capsys.readouterr().err


def _answer(cid: str, arm: str, ms: float, cost: float, **more: object) -> InferenceResult:
    route = Route(requested="chat", chain=["small"], experiment="ab", arm=arm)
    return InferenceResult(
        correlation_id=cid,
        tenant="acme",
        status="error" if more.get("error") else "ok",
        route=route.model_copy(update={"escalated": bool(more.get("escalated"))}),
        cost_usd=cost,
        timings=Timings(total_ms=ms),
        finished_at=NOON.timestamp(),
    )


def test_an_experiments_arms_are_compared_with_intervals(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Arm a: 100 answers at 100 ms and $0.01, 5 errors. Arm b: 100 at 200 ms and $0.02,
    20 escalated. Each counted once, however often it is answered."""
    results = [_answer(f"a-{i}", "a", 100.0, 0.01, error=i < 5) for i in range(100)]
    results += [_answer(f"b-{i}", "b", 200.0, 0.02, escalated=i < 20) for i in range(100)]

    async def count() -> None:
        client = aioredis.Redis.from_url(redis_url)
        stats = ExperimentStats(client)
        for result in [*results, *results[:10]]:
            await stats.answered(result)
        await client.aclose()

    asyncio.run(count())
    monkeypatch.setenv("LLMQ_REDIS_URL", redis_url)
    assert main(["costs", "--experiment", "ab", "--json"]) == 0
    arms = {a["arm"]: a for a in json.loads(capsys.readouterr().out)["arms"]}
    assert {a: arms[a]["answers"] for a in arms} == {"a": 100, "b": 100}
    assert arms["a"]["cost_per_request"] == pytest.approx(0.01)
    assert arms["b"]["latency_p50_ms"] == pytest.approx(200, rel=0.12)  # one bucket's width
    low, high = arms["b"]["latency_p50_interval"]
    assert low <= 200 <= high
    assert arms["a"]["error_rate"] == 0.05 and arms["b"]["escalation_rate"] == 0.2
    low, high = arms["a"]["error_interval"]
    assert low < 0.05 < high
    assert main(["costs", "--experiment", "ab"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:2] == ["arm", "answers"]
    assert table[3].startswith("a ") and table[4].startswith("b ")
    assert main(["costs", "--experiment", "none-such"]) == 1


def _db(redis_url: str, db: int) -> str:
    """Another database of the module's Redis: the reports above read every key of db 0."""
    return f"{redis_url.rsplit('/', 1)[0]}/{db}"


EDGE = NOON + timedelta(hours=3)
"""An hour's edge: a copy made anew at 14:00:01 of an answer made at 13:59:59."""


def _made_anew(result: InferenceResult) -> tuple[InferenceResult, InferenceResult]:
    """An answer made at 13:59:59 to a request of 13:59:58, and made anew at 14:00:01 (a
    redelivery while the result store was away): the same request, answered twice."""
    asked = (EDGE - timedelta(seconds=2)).timestamp()

    def at(finished: datetime) -> InferenceResult:
        took = Timings(total_ms=(finished.timestamp() - asked) * 1000)
        return result.model_copy(update={"finished_at": finished.timestamp(), "timings": took})

    return at(EDGE - timedelta(seconds=1)), at(EDGE + timedelta(seconds=1))


def test_a_saving_made_anew_in_the_next_hour_counts_once(redis_url: str) -> None:
    """A cached answer is metered once per request (its event_id), in its request's hour: a
    copy made anew in the next hour was counted again there, whose set did not know it."""
    cached = InferenceResult(
        correlation_id="edge",
        tenant="edge",
        status="ok",
        model_used="smollm2-135m",
        cache=CacheStatus.EXACT,
        response=answer("Paris."),
    )
    events = [saved(r, Catalog.builtin()) for r in _made_anew(cached)]
    first, again = (e for e in events if e is not None)

    async def count() -> tuple[list[bool], list[tuple[str, float]]]:
        client = aioredis.Redis.from_url(_db(redis_url, 1))
        rollups = CostRollups(Pipelined(client))
        added = [await rollups.add(e) for e in (first, again, again, first)]
        hours = [hour_of(r.finished_at) for r in _made_anew(cached)]
        rows = await read(client, hours)
        await client.aclose()
        return added, [(r.hour, r.count) for r in rows]

    added, rows = asyncio.run(count())
    assert added == [True, False, False, False]
    assert rows == [(hour_of((EDGE - timedelta(seconds=2)).timestamp()), 1)]


def test_an_experiments_answer_made_anew_in_the_next_hour_counts_once(redis_url: str) -> None:
    first, again = _made_anew(_answer("edge-0", "a", 100.0, 0.01))

    async def count() -> dict[str, dict[str, float]]:
        client = aioredis.Redis.from_url(_db(redis_url, 2))
        stats = ExperimentStats(client)
        for result in (first, again, first):
            await stats.answered(result)
        sums = await experiment.read(client, "ab")
        await client.aclose()
        return sums

    sums = asyncio.run(count())
    assert sums["a"]["answers"] == 1 and sums["a"]["cost_usd"] == pytest.approx(0.01)


def test_the_copies_of_an_experiments_request_count_in_its_arm_errors_included(
    redis_url: str,
) -> None:
    """A copy answered in time, one whose deadline passed as it waited, and one whose leader
    failed: each in the leader's arm (the last two dropped out of it: no route). Both
    coalesced copies count as `cached or coalesced`, the failed one too (its cache outcome,
    as a copy of a generation's final failure always did); the expired one did not wait
    its generation out."""
    route = Route(requested="chat", chain=["small"], experiment="ab", arm="a")
    lead = admitted(raw_request(cid="lead", temperature=0)).model_copy(update={"route": route})
    failed = lead.model_copy(
        update={"request": lead.request.model_copy(update={"correlation_id": "failed"})}
    )

    def copy(work: WorkItem, cid: str, deadline: float | None = None) -> InferenceRequest:
        return work.request.model_copy(update={"correlation_id": cid, "deadline": deadline})

    async def count() -> dict[str, float]:
        client = aioredis.Redis.from_url(_db(redis_url, 3))
        outbox = Outbox(FakeStore(), FakeSend(), answered=[ExperimentStats(client)])
        coalescer, fp = Coalescer({}, stale_after_s=600), lead.fingerprint
        # 1) A leader answered: its copy in time, and one whose deadline passed.
        assert not coalescer.join(lead.request, fp)
        assert coalescer.join(copy(lead, "in-time"), fp)
        assert coalescer.join(copy(lead, "late", deadline=time.time() - 1), fp)
        done = Completion(work=lead, response=answer("Hi"), timings=Timings(), worker="w")
        result = replies.from_completion(done)
        await coalescer.settle(fp, [(None, result)], replies.to_followers(result), outbox.reply_all)
        # 2) A leader whose handling failed (the Guard answers it): its copy shares that.
        assert not coalescer.join(failed.request, fp)
        assert coalescer.join(copy(failed, "failed-copy"), fp)
        await fail_copies(coalescer, outbox, failed, LlmqError(ErrorCode.ENGINE_ERROR, "boom"))
        sums = await experiment.read(client, "ab")
        await client.aclose()
        return sums["a"]

    arm = asyncio.run(count())
    assert (arm["answers"], arm["errors"], arm["cached"]) == (4, 2, 2)
