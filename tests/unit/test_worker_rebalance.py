"""The worker through a rebalance: what it finishes and commits before partitions move,
what runs on through it, and what is handed back (fakes: tests/unit/worker_fakes.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from schemas.lanes import Lane
from tests.unit.worker_fakes import (
    BATCH,
    STANDARD,
    FakeConsumer,
    FakeEngine,
    FakeProducer,
    MemoryStarts,
    model_spec,
    run_worker,
    until,
    work,
)
from workers.lanes import LanePolicy
from workers.worker import Worker

pytestmark = pytest.mark.timeout(30)


def test_a_revoked_partitions_buffered_records_are_never_started() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [work(Lane.BATCH, i) for i in range(10)])
    consumer.add(STANDARD, [work(Lane.STANDARD, 0)])
    lanes = LanePolicy(min_share=0.0, standard_cap=1.0, batch_cap=1.0, buffer=4)
    engine = FakeEngine()
    engine.gate.clear()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(engine.started) == 2 and consumer.positions[STANDARD] == 1)
        consumer.rebalancing = True
        revoking = asyncio.create_task(worker.rebalance_listener().on_partitions_revoked({BATCH}))
        await asyncio.sleep(0.05)
        engine.gate.set()  # the revoked partition's generations finish: nothing of it follows
        await revoking
        consumer.revoke(BATCH)
        consumer.rebalancing = False
        await until(lambda: len(producer.completions()) >= 3)
        await until(lambda: consumer.committed.get(STANDARD) == 1)
        await asyncio.sleep(0.05)
        stop.set()

    run_worker(
        consumer, producer, lambda: engine, scenario, spec=model_spec(max_inflight=2), lanes=lanes
    )
    assert engine.lanes_started() == [2, 2, 1], "then standard, and no more of the batch"
    assert consumer.committed.get(BATCH) == 2, "those that finished, before it moved"


def test_generations_of_revoked_partitions_finish_and_commit_before_they_move() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [work(Lane.BATCH, i) for i in range(2)])
    lanes = LanePolicy(min_share=0.0, standard_cap=1.0, batch_cap=1.0, buffer=4)
    engine = FakeEngine()
    engine.gate.clear()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(engine.started) == 2)
        finishing = asyncio.create_task(worker.finish({BATCH}))
        await asyncio.sleep(0.05)
        assert not finishing.done(), "it waits for the generations in flight"
        engine.gate.set()
        await finishing
        assert consumer.committed == {BATCH: 2}, "committed before the partition moves"
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, lanes=lanes)
    assert len(producer.completions()) == 2


def test_a_generation_past_the_bound_whose_partition_moved_is_aborted_and_handed_back() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [work(Lane.BATCH)])
    starts = MemoryStarts()
    engine = FakeEngine()
    engine.gate.clear()  # never finishes

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(engine.started) == 1)
        await worker.finish({BATCH})
        worker.forget({BATCH})
        assert engine.aborted == [], "it runs on until the assignment says where it went"
        consumer.revoke(BATCH)
        await worker.take_back({STANDARD})
        # No longer generated here, and not a crash.
        assert engine.aborted == [engine.started[0][0]]
        assert starts.counts == {(BATCH.topic, 0, 0): 0}
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, starts=starts, drain_timeout_s=0.05)
    assert producer.completions() == []
    assert consumer.committed.get(BATCH, 0) == 0


def test_a_generation_past_the_bound_whose_partition_came_back_runs_on_once() -> None:
    """An eager rebalance takes every partition and mostly gives it back: a generation
    that outlived the drain bound is kept, not restarted, and its offset stays in flight
    until it is answered; the records fetched again from the committed offset are not
    started twice."""
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [work(Lane.BATCH, i) for i in range(3)])
    lanes = LanePolicy(min_share=0.0, standard_cap=1.0, batch_cap=1.0, buffer=4)
    engine = FakeEngine()
    engine.hold.clear()  # each generation stops after its first token

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(engine.started) == 3)
        consumer.rebalancing = True
        await worker.finish({BATCH})
        worker.forget({BATCH})
        consumer.positions[BATCH] = consumer.committed.get(BATCH, 0)  # fetched again
        await worker.take_back({BATCH})
        consumer.rebalancing = False
        await asyncio.sleep(0.05)
        assert engine.aborted == [] and len(engine.started) == 3, "not restarted"
        await worker.commit()
        assert consumer.committed.get(BATCH, 0) == 0, "still in flight, not committed"
        engine.hold.set()
        await until(lambda: consumer.committed.get(BATCH) == 3)
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, lanes=lanes, drain_timeout_s=0.05)
    assert sorted(c.work.request.correlation_id for c in producer.completions()) == [
        "batch-0",
        "batch-1",
        "batch-2",
    ]
    assert len(engine.started) == 3


def test_a_record_answered_before_its_partition_moved_is_not_generated_again() -> None:
    """The last owner published offset 1's outcome but could commit only up to offset 0,
    still running when the partition moved: here 0 runs, 1 is skipped, both commit."""
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [work(Lane.BATCH, i) for i in range(2)])
    starts = MemoryStarts(answers={(BATCH.topic, 0, 1): "batch-1", (BATCH.topic, 0, 0): "x"})
    engine = FakeEngine()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: consumer.committed.get(BATCH) == 2)
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, starts=starts)
    assert [c.work.request.correlation_id for c in producer.completions()] == ["batch-0"]
    assert len(engine.started) == 1, "a mark of another request at its offset is not its own"
    assert starts.answers[(BATCH.topic, 0, 0)] == "batch-0"


class SlowAckProducer(FakeProducer):
    """Sends at once; the broker acknowledges only once `acks` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.acks = asyncio.Event()

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        self.sent.append((topic, value))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(self.acks.wait())
        waiting.add_done_callback(lambda _: ack.set_result(None))
        return ack


def test_a_generation_publishing_its_outcome_at_the_bound_is_not_handed_back() -> None:
    consumer = FakeConsumer()
    consumer.add(BATCH, [work(Lane.BATCH)])
    starts = MemoryStarts()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(producer.completions()) == 1)  # sent, not yet acknowledged
        finishing = asyncio.create_task(worker.finish({BATCH}))
        await asyncio.sleep(0.2)
        assert not finishing.done(), "past the bound it waits for the ack: the answer is out"
        producer.acks.set()
        await finishing
        assert consumer.committed == {BATCH: 1}, "so the next owner does not answer it again"
        assert starts.counts == {}, "an outcome, not a hand-back"
        stop.set()

    producer = SlowAckProducer()
    run_worker(consumer, producer, FakeEngine, scenario, starts=starts, drain_timeout_s=0.05)
    assert len(producer.completions()) == 1


def test_a_generation_that_ended_in_the_drain_is_not_held_when_its_partition_comes_back() -> None:
    """It ended while the drain waited for its ack: parked anyway, its offset stayed
    pending once the partition came back, and the commit went back to it for good."""
    consumer = FakeConsumer()
    consumer.add(BATCH, [work(Lane.BATCH, 0)])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(producer.completions()) == 1)  # publishing at the bound
        finishing = asyncio.create_task(worker.finish({BATCH}))
        await asyncio.sleep(0.2)
        producer.acks.set()
        await finishing
        worker.forget({BATCH})
        await worker.take_back({BATCH})  # the partition comes back here
        consumer.add(BATCH, [work(Lane.BATCH, n) for n in range(1, 4)])
        await until(lambda: len(producer.completions()) == 4)
        stop.set()

    producer = SlowAckProducer()
    run_worker(consumer, producer, FakeEngine, scenario, drain_timeout_s=0.05)
    assert consumer.committed == {BATCH: 4}


class SlowBegin(MemoryStarts):
    """Counts a start at once; its round trip never returns (Redis slow)."""

    async def begin(self, topic: str, partition: int, offset: int) -> None:
        await super().begin(topic, partition, offset)
        await asyncio.Event().wait()


def test_a_start_counted_as_its_record_is_handed_back_is_given_back() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [work(Lane.BATCH)])
    starts = SlowBegin()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: bool(starts.counts))
        await worker.finish({BATCH})
        worker.forget({BATCH})
        consumer.revoke(BATCH)
        await worker.take_back({STANDARD})  # it went elsewhere: aborted in begin
        assert starts.counts == {(BATCH.topic, 0, 0): 0}, "a hand-back, not a crash"
        stop.set()

    run_worker(consumer, producer, FakeEngine, scenario, starts=starts, drain_timeout_s=0.05)
