"""What the autoscaler reads of a pool, against a fake Kafka: the records' token headers,
the arrivals since it started, and the partitions that cap the pool."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition

from autoscaler import pools
from autoscaler.pools import Pools, _tokens
from llmq.groups import Group
from schemas.lanes import Lane
from schemas.names import HEADER_TOKENS, work_topic
from schemas.settings import ServiceSettings

pytestmark = pytest.mark.timeout(30)

MODEL = "m"


@dataclass(frozen=True)
class Record:
    offset: int
    headers: Sequence[tuple[str, bytes | None]]


class Consumer:
    """The topics' partitions with their end offsets; `batches` come from getmany, then
    nothing (`drained` is set)."""

    def __init__(self, ends: dict[TopicPartition, int], batches: list[dict[Any, Any]]) -> None:
        self.ends = ends
        self.batches = batches
        self.drained = asyncio.Event()

    async def start(self) -> None:
        pass

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in partitions}

    async def beginning_offsets(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)

    async def getmany(self, timeout_ms: int) -> dict[Any, Any]:
        if self.batches:
            return self.batches.pop(0)
        self.drained.set()
        await asyncio.Event().wait()
        return {}


class Admin:
    """A workers' group that never committed."""

    async def start(self) -> None:
        pass

    async def list_consumer_group_offsets(self, group: str) -> dict[TopicPartition, Any]:
        return {}


def _pools(monkeypatch: pytest.MonkeyPatch, consumer: Consumer) -> Pools:
    async def assigned(_: Consumer, topics: list[str]) -> list[TopicPartition]:
        return list(consumer.ends)

    async def describe_groups(_: Admin, groups: Sequence[str]) -> dict[str, Group]:
        return {g: Group(2, "Stable") for g in groups}

    monkeypatch.setattr(pools, "AIOKafkaConsumer", lambda *_, **__: consumer)
    monkeypatch.setattr(pools, "AIOKafkaAdminClient", lambda **_: Admin())
    monkeypatch.setattr(pools, "fix_fetcher", lambda: None)
    monkeypatch.setattr(pools, "assigned", assigned)
    monkeypatch.setattr(pools, "describe_groups", describe_groups)
    return Pools(ServiceSettings(), [MODEL], "test")


async def _follow(found: Pools, consumer: Consumer) -> None:
    await found.start()
    reading = asyncio.create_task(found.follow())
    await consumer.drained.wait()
    reading.cancel()


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        (b"12.5", 12.5),
        (None, 7.0),
        (b"inf", 7.0),
        (b"-inf", 7.0),
        (b"nan", 7.0),
        (b"-5", 7.0),
        (b"many", 7.0),
        (b"\xff", 7.0),
    ],
)
def test_only_a_finite_count_of_tokens_is_read_from_a_header(
    value: bytes | None, tokens: float
) -> None:
    """Any producer can write headers: a null would kill the reader, and an "inf" would
    reach the policy's rounding and stop the autoscaler."""
    assert _tokens([("other", b"1"), (HEADER_TOKENS, value)], 7.0) == tokens


def test_the_backlog_read_at_the_start_is_not_arrivals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three records were waiting when the autoscaler started; two came after. All five are
    backlog, only the two arrived."""
    tp = TopicPartition(work_topic(MODEL, Lane.BATCH), 0)
    records = [Record(offset, [(HEADER_TOKENS, b"10")]) for offset in range(5)]
    consumer = Consumer({tp: 3}, [{tp: records}])
    found = _pools(monkeypatch, consumer)

    async def look() -> pools.PoolView:
        await _follow(found, consumer)
        consumer.ends[tp] = 5
        return await found.look(MODEL)

    view = asyncio.run(look())
    assert view.backlog_tokens == {Lane.BATCH: 50.0}
    assert view.arrived_tokens == 20.0


def test_the_pool_is_capped_by_its_largest_lane_not_all_lanes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lane's partitions are consumed by at most as many workers: with 2, 4 and 3
    partitions no lane's backlog keeps more than 4 busy."""
    counts = {Lane.INTERACTIVE: 2, Lane.STANDARD: 4, Lane.BATCH: 3}
    ends = {
        TopicPartition(work_topic(MODEL, lane), p): 0
        for lane, n in counts.items()
        for p in range(n)
    }
    consumer = Consumer(ends, [])
    found = _pools(monkeypatch, consumer)

    async def look() -> pools.PoolView:
        await _follow(found, consumer)
        return await found.look(MODEL)

    view = asyncio.run(look())
    assert view.partitions == 4 and view.members == 2
