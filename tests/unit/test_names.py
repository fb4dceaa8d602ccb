"""Topic names: one work topic per model and lane, all valid Kafka names."""

from __future__ import annotations

import pytest

from schemas import names
from schemas.lanes import Lane
from schemas.names import TOPIC_NAME, work_topic, work_topics


@pytest.mark.parametrize(
    ("lane", "topic"),
    [
        (Lane.INTERACTIVE, "llmq.work.smollm2-135m.interactive"),
        (Lane.STANDARD, "llmq.work.smollm2-135m.standard"),
        (Lane.BATCH, "llmq.work.smollm2-135m.batch"),
    ],
)
def test_work_topic_names(lane: Lane, topic: str) -> None:
    assert work_topic("smollm2-135m", lane) == topic


def test_work_topics_list_every_lane_highest_priority_first() -> None:
    assert work_topics("qwen2.5-0.5b") == [
        "llmq.work.qwen2.5-0.5b.interactive",
        "llmq.work.qwen2.5-0.5b.standard",
        "llmq.work.qwen2.5-0.5b.batch",
    ]


def test_every_topic_is_a_valid_kafka_name() -> None:
    plan = [spec.name for spec in names.topic_plan(["m" * 64], 4)]
    for name in plan:
        assert TOPIC_NAME.fullmatch(name), name
    assert len(set(plan)) == len(plan)


def test_topic_name_pattern_rejects_what_kafka_rejects() -> None:
    for bad in ("", "has space", "a/b", "x" * 250):
        assert TOPIC_NAME.fullmatch(bad) is None, bad
