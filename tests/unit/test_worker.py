"""The worker's pure helpers (the loop itself needs Kafka: see tests/integration)."""

from __future__ import annotations

import pytest

from schemas.lanes import Lane
from schemas.topics import work_topic
from workers.worker import _lane_of


@pytest.mark.parametrize("model", ["smollm2-135m", "qwen2.5-0.5b", "a.b.c"])
@pytest.mark.parametrize("lane", list(Lane))
def test_lane_of_a_work_topic(model: str, lane: Lane) -> None:
    assert _lane_of(work_topic(model, lane)) is lane


def test_records_sort_by_lane_priority() -> None:
    topics = [work_topic("m", Lane.BATCH), work_topic("m", Lane.INTERACTIVE)]
    topics.append(work_topic("m", Lane.STANDARD))
    assert sorted(topics, key=lambda t: _lane_of(t).priority) == [
        "llmq.work.m.interactive",
        "llmq.work.m.standard",
        "llmq.work.m.batch",
    ]


def test_a_topic_that_is_not_a_lane_is_an_error() -> None:
    with pytest.raises(ValueError, match="urgent"):
        _lane_of("llmq.work.m.urgent")
