"""llmq_result_latency_seconds is labelled with the request's lane, so the latency alert can
leave out the batch lane, which yields to the others by design."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from schemas.lanes import Lane
from schemas.result import InferenceResult, Timings
from streams.outbox import Outbox
from tests.unit.stages import FakeSend, FakeStore

SERIES = "llmq_result_latency_seconds_count"


def _observed(labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(SERIES, labels) or 0.0


def _reply(correlation_id: str, lane: Lane | None) -> None:
    result = InferenceResult(
        correlation_id=correlation_id,
        tenant="acme",
        status="ok" if lane is not None else "error",
        lane=lane,
        timings=Timings(total_ms=90_000.0),
    )
    asyncio.run(Outbox(FakeStore(), FakeSend()).reply("app.replies", result))


def test_each_result_latency_is_observed_under_its_lane() -> None:
    batch = {"cache": "none", "lane": "batch"}
    interactive = {"cache": "none", "lane": "interactive"}
    before = _observed(batch), _observed(interactive)
    _reply("b-1", Lane.BATCH)
    assert (_observed(batch), _observed(interactive)) == (before[0] + 1, before[1])


def test_a_result_without_a_lane_is_observed_under_lane_none() -> None:
    labels = {"cache": "none", "lane": "none"}
    before = _observed(labels)
    _reply("r-1", None)
    assert _observed(labels) == before + 1
