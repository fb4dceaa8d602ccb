"""What the autoscaler reads of a pool, against a fake Kafka: the records' token headers,
the arrivals since it started, and the partitions that cap the pool."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from autoscaler import pools
from autoscaler.ledger import Ledger
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


@dataclass(frozen=True)
class Offset:
    offset: int
    metadata: str = ""


class Admin:
    """The workers' group: its committed `offsets` (none: it never committed) and their
    `metadata`, and what describing it answers (an exception is raised)."""

    def __init__(self) -> None:
        self.offsets: dict[TopicPartition, int] = {}
        self.metadata: dict[TopicPartition, str] = {}
        self.group: Group | Exception = Group(2, "Stable")

    async def start(self) -> None:
        pass

    async def list_consumer_group_offsets(self, group: str) -> dict[TopicPartition, Any]:
        return {tp: Offset(o, self.metadata.get(tp, "")) for tp, o in self.offsets.items()}


def _pools(
    monkeypatch: pytest.MonkeyPatch, consumer: Consumer, admin: Admin | None = None
) -> Pools:
    admin = admin or Admin()

    async def assigned(_: Consumer, topics: list[str]) -> list[TopicPartition]:
        return list(consumer.ends)

    async def describe_groups(_: Admin, groups: Sequence[str]) -> dict[str, Group]:
        if isinstance(admin.group, Exception):
            raise admin.group
        return dict.fromkeys(groups, admin.group)

    monkeypatch.setattr(pools, "AIOKafkaConsumer", lambda *_, **__: consumer)
    monkeypatch.setattr(pools, "AIOKafkaAdminClient", lambda **_: admin)
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


@pytest.mark.parametrize("group", [Group(2, "Stable"), Group(0, "Empty"), Group(0, "Dead")])
def test_the_view_says_the_state_of_the_workers_group(
    monkeypatch: pytest.MonkeyPatch, group: Group
) -> None:
    """The policy holds a worker for a pool whose group is gone (Dead), not one whose
    workers left (Empty)."""
    consumer = Consumer({TopicPartition(work_topic(MODEL, Lane.BATCH), 0): 0}, [])
    admin = Admin()
    admin.group = group
    found = _pools(monkeypatch, consumer, admin)

    async def look() -> pools.PoolView:
        await _follow(found, consumer)
        return await found.look(MODEL)

    view = asyncio.run(look())
    assert (view.members, view.state) == group


def test_a_record_read_again_is_not_an_arrival_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions added to a topic make the reader start over from the oldest records."""
    tp = TopicPartition(work_topic(MODEL, Lane.BATCH), 0)
    records = [Record(offset, [(HEADER_TOKENS, b"10")]) for offset in range(5)]
    consumer = Consumer({tp: 3}, [{tp: records}, {tp: records}])
    found = _pools(monkeypatch, consumer)

    async def look() -> pools.PoolView:
        await _follow(found, consumer)
        consumer.ends[tp] = 5
        return await found.look(MODEL)

    assert asyncio.run(look()).arrived_tokens == 20.0


def test_a_ledger_refuses_a_record_read_again_after_it_was_forgotten() -> None:
    ledger = Ledger(default_tokens=50)
    assert all(ledger.add(offset, 100) for offset in range(3))
    ledger.forget_before(3)
    assert ledger.add(1, 999) is False
    assert ledger.mean() == 100
    assert ledger.between(3, 4) == 100


@pytest.mark.parametrize(
    ("group", "lost"),
    [
        (Group(2, "Stable"), False),
        (Group(0, ""), False),  # describing it failed too (its error is not read)
        (Group(0, "Empty"), True),
        (Group(0, "Dead"), True),
    ],
)
def test_offsets_missing_from_an_answer_skip_the_look_unless_the_group_is_empty(
    monkeypatch: pytest.MonkeyPatch, group: Group, lost: bool
) -> None:
    """aiokafka's admin answers no offsets where the broker answered only a group-level
    error (a coordinator loading after a failover): read as never committed, the whole log
    was backlog, then served within a tick. A group without members may have lost them
    (expired, deleted): then the log is the backlog."""
    tp = TopicPartition(work_topic(MODEL, Lane.BATCH), 0)
    consumer = Consumer({tp: 10}, [])
    admin = Admin()
    admin.offsets = {tp: 8}
    found = _pools(monkeypatch, consumer, admin)

    async def looks() -> list[pools.PoolView | KafkaError]:
        await _follow(found, consumer)
        seen: list[pools.PoolView | KafkaError] = [await found.look(MODEL)]
        admin.offsets, admin.group = {}, group
        try:
            seen.append(await found.look(MODEL))
        except KafkaError as exc:
            seen.append(exc)
        admin.offsets, admin.group = {tp: 9}, Group(2, "Stable")
        return [*seen, await found.look(MODEL)]

    first, blip, after = asyncio.run(looks())
    assert isinstance(first, pools.PoolView) and first.backlog_records == 2
    assert isinstance(after, pools.PoolView) and after.backlog_records == 1
    if lost:
        assert isinstance(blip, pools.PoolView) and blip.backlog_records == 10
    else:
        assert isinstance(blip, KafkaError)
        assert after.served_records == 1


def test_a_look_that_fails_leaves_the_work_served_to_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A skipped tick's commits are counted at the next, which spans its time too."""
    tp = TopicPartition(work_topic(MODEL, Lane.BATCH), 0)
    consumer = Consumer({tp: 10}, [])
    admin = Admin()
    admin.offsets = {tp: 5}
    found = _pools(monkeypatch, consumer, admin)

    async def looks() -> pools.PoolView:
        await _follow(found, consumer)
        await found.look(MODEL)
        admin.offsets, admin.group = {tp: 7}, KafkaError("describe failed")
        with pytest.raises(KafkaError):
            await found.look(MODEL)
        admin.offsets, admin.group = {tp: 9}, Group(2, "Stable")
        return await found.look(MODEL)

    assert asyncio.run(looks()).served_records == 4


def test_records_deleted_below_a_stale_commit_are_neither_backlog_nor_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The group committed 5, then retention (or kafka-delete-records) deleted every record
    up to 10: the commit is below the log's start, and nothing is left to do."""
    tps = [TopicPartition(work_topic(MODEL, lane), 0) for lane in Lane]
    consumer = Consumer(dict.fromkeys(tps, 10), [])
    admin = Admin()
    admin.offsets = {tps[0]: 5}
    found = _pools(monkeypatch, consumer, admin)

    async def begins(partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 10)

    async def looks() -> list[pools.PoolView]:
        await _follow(found, consumer)
        before = await found.look(MODEL)
        monkeypatch.setattr(consumer, "beginning_offsets", begins)
        return [before, await found.look(MODEL)]

    before, after = asyncio.run(looks())
    assert before.backlog_records == 5 + 10 + 10
    assert (after.backlog_records, after.served_records, after.served_tokens) == (0, 0, 0.0)
