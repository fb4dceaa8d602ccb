"""Where the worker's group starts partitions nothing was taken from: looked up in the
background, never across a rebalance, never holding up the loop (fakes:
tests/unit/worker_fakes.py; the first lookups are in test_worker.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from collections.abc import Set as AbstractSet

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.util import commit_structure_validate

from schemas.lanes import Lane
from tests.unit.worker_fakes import (
    BATCH,
    INTERACTIVE,
    STANDARD,
    Committed,
    FakeConsumer,
    FakeEngine,
    FakeProducer,
    MemoryStarts,
    model_spec,
    run_worker,
    until,
    work,
)
from workers import group_starts
from workers.worker import POLL_TIMEOUT_MS, Worker

pytestmark = pytest.mark.timeout(30)


class Held(Committed):
    """STANDARD's committed offset is told once `go` is set (`asked` once it is asked)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.go = asyncio.Event()

    async def __call__(self, tp: TopicPartition) -> int | None:
        if tp == STANDARD:
            self.asked.set()
            await self.go.wait()
        return self.get(tp)


class StandardFirst(set[TopicPartition]):
    """An assignment that lists STANDARD first, and so do the sets taken from it: asked one
    after the other, its position is read before BATCH's."""

    def __iter__(self) -> Iterator[TopicPartition]:
        return iter(sorted(super().__iter__(), key=lambda tp: tp != STANDARD))

    def __sub__(self, other: AbstractSet[object]) -> StandardFirst:
        return StandardFirst(set(self) - set(other))


class Racy(FakeConsumer):
    """Its commits fail while `failing` (at first); STANDARD's committed offset is told once
    `held.go` is set, and BATCH's position once `batch_go` is (a slow leader)."""

    def __init__(self) -> None:
        super().__init__()
        self.held = Held()
        self.committed = self.held
        self.failing = True
        self.batch_go = asyncio.Event()
        self.asked: list[dict[TopicPartition, int]] = []
        """Every commit asked for, failed or not."""
        self.read: dict[TopicPartition, int] = {}
        """The first position the worker read, by partition."""

    def assignment(self) -> StandardFirst:
        return StandardFirst(self.logs)

    async def position(self, tp: TopicPartition) -> int:
        if tp == BATCH:
            await self.batch_go.wait()
        position = await super().position(tp)
        self.read.setdefault(tp, position)
        return position

    async def commit(self, offsets: dict[TopicPartition, int | tuple[int, str]]) -> None:
        self.asked.append({tp: c.offset for tp, c in commit_structure_validate(offsets).items()})
        if self.failing:
            raise KafkaConnectionError("the coordinator is away")
        await super().commit(offsets)


@pytest.mark.parametrize("taken", ["before the lookup", "during the lookup"])
def test_a_lookup_a_rebalance_came_during_commits_no_position_past_dropped_records(
    taken: str,
) -> None:
    """STANDARD's ten records are fetched and two start, while commits fail; a rebalance
    drops the other eight (its commit fails too, so the group has no offset) and gives the
    partition back, from its start. A position read before, 10, would skip the eight never
    served."""
    consumer, producer = Racy(), FakeProducer()
    consumer.add(STANDARD, [])
    consumer.add(BATCH, [])
    records = [work(Lane.STANDARD, i) for i in range(10)]
    if taken == "before the lookup":
        consumer.add(STANDARD, records)
        consumer.held.go.set()
    engine = FakeEngine()
    engine.gate.clear()
    held_back: list[int] = []  # how many commits were asked for while 2 and 3 were held

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        if taken == "during the lookup":
            await consumer.held.asked.wait()
            consumer.add(STANDARD, records)
        await until(lambda: len(engine.started) == 2 and consumer.positions[STANDARD] == 10)
        consumer.held.go.set()
        await asyncio.sleep(0.05)  # the lookup reads what it may (not BATCH's position)
        listener = worker.rebalance_listener()
        consumer.rebalancing = True  # and nothing is fetched until the lookup's use
        engine.gate.set()  # 0 and 1 finish during the revocation
        await listener.on_partitions_revoked({STANDARD, BATCH})
        engine.gate.clear()
        consumer.positions[STANDARD] = 0  # the group has no offset: from the log's start
        consumer.failing = False
        await listener.on_partitions_assigned({STANDARD, BATCH})
        consumer.batch_go.set()  # the lookup ends
        await until(lambda: STANDARD in consumer.committed and BATCH in consumer.committed)
        consumer.rebalancing = False
        await until(lambda: len(engine.started) == 4)
        await asyncio.sleep(0.05)  # commits go on
        held_back.append(len(consumer.asked))
        engine.gate.set()
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, spec=model_spec(max_inflight=2))
    if taken == "during the lookup":
        assert consumer.read[STANDARD] == 10, "read before the rebalance"
    standard = [
        offsets[STANDARD] for offsets in consumer.asked[: held_back[0]] if STANDARD in offsets
    ]
    assert max(standard) <= 2, "0 and 1 answered, 2 and 3 started again: never past them"
    assert consumer.committed[BATCH] == 0


def test_a_partition_records_were_taken_from_commits_no_further_than_them() -> None:
    """Its commits failing, the group has no offset for it; its position, past the records
    in flight, is never committed."""
    consumer, producer = Racy(), FakeProducer()
    consumer.held.go.set()
    consumer.add(STANDARD, [work(Lane.STANDARD, i) for i in range(4)])
    engine = FakeEngine()
    engine.gate.clear()
    held_back: list[int] = []

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(engine.started) == 2 and consumer.positions[STANDARD] == 4)
        await asyncio.sleep(0.1)  # commits fail, and go on
        held_back.append(len(consumer.asked))
        engine.gate.set()
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, spec=model_spec(max_inflight=2))
    assert {offsets[STANDARD] for offsets in consumer.asked[: held_back[0]]} == {0}


class Stuck(FakeConsumer):
    """BATCH's position never comes (its leader is away); `asked` once it is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()

    async def position(self, tp: TopicPartition) -> int:
        if tp == BATCH:
            self.asked.set()
            await asyncio.Event().wait()
        return await super().position(tp)


def test_a_partition_kafka_does_not_answer_for_holds_up_neither_fetching_nor_the_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(group_starts, "START_LOOKUP_S", 1.0)
    consumer, producer = Stuck(), FakeProducer()
    consumer.add(BATCH, [])
    consumer.add(STANDARD, [])
    consumer.positions[STANDARD] = 3
    consumer.add(INTERACTIVE, [])
    engine = FakeEngine()
    loop_s: list[float] = []

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await consumer.asked.wait()
        loop = asyncio.get_running_loop()
        added = loop.time()
        consumer.add(INTERACTIVE, [work(Lane.INTERACTIVE, 0)])
        await until(lambda: len(engine.started) == 1)
        loop_s.append(loop.time() - added)
        await until(lambda: consumer.committed.get(STANDARD) == 3)
        stop.set()

    with caplog.at_level(logging.WARNING, logger="workers.group_starts"):
        run_worker(consumer, producer, lambda: engine, scenario)
    assert loop_s[0] < 3 * POLL_TIMEOUT_MS / 1000, "started without waiting for the lookup"
    assert BATCH not in consumer.committed
    assert "cannot see where the group starts its partitions, will retry" in caplog.text


def test_a_stop_ends_a_lookup_still_waiting_and_leaves_no_task() -> None:
    consumer, producer = Stuck(), FakeProducer()
    consumer.add(BATCH, [])

    async def main() -> float:
        worker = Worker(
            model_spec(),
            FakeEngine(),
            consumer,
            producer,
            worker_id="w",
            commit_interval_s=0.01,
            starts=MemoryStarts(),
        )
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        await consumer.asked.wait()
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        stop.set()
        await running
        assert asyncio.all_tasks() == {asyncio.current_task()}, "the lookup is over"
        return loop.time() - stopped

    assert asyncio.run(main()) < 1.0, "not waiting for Kafka's answer"


class Broken(Committed):
    """Fails as no Kafka error does."""

    async def __call__(self, tp: TopicPartition) -> int | None:
        raise ValueError("a bug")


def test_an_unexpected_error_of_a_lookup_stops_the_worker() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.committed = Broken()
    consumer.add(STANDARD, [])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await asyncio.sleep(2)  # the worker stops of itself, at once
        stop.set()

    with pytest.raises(ValueError, match="a bug"):
        run_worker(consumer, producer, FakeEngine, scenario)
