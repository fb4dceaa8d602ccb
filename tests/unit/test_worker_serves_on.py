"""The worker serves on through what once stopped or stalled it: a server whose chunks
outnumber its token count, a suspect cancelled while it waited to run alone, and every lane
full for longer than Kafka waits for a poll (a piece that cannot be built: test_tokens)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from schemas.catalog import ModelSpec
from schemas.lanes import Lane
from schemas.result import Usage
from schemas.work import WorkItem
from tests.unit.openai_server import FAST, chunk, collect, engine, running, stream, usage
from tests.unit.worker_fakes import (
    BATCH,
    INTERACTIVE,
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
from workers.engine import EngineStep
from workers.lanes import LanePolicy
from workers.openai_engine import OpenAIEngine
from workers.solo import Solo
from workers.worker import Worker

pytestmark = pytest.mark.timeout(60)

OVERCHUNKED = stream(*(chunk("a") for _ in range(40)), chunk(finish="stop"), usage(7, 10))
"""40 chunks of text, but 10 completion tokens by the usage report (a proxy re-chunking)."""
STREAMED = WorkItem.model_validate_json(work(stream=True))
USAGE = Usage(prompt_tokens=2, completion_tokens=5, total_tokens=7)


def test_a_server_that_sends_more_chunks_than_it_counts_gives_no_negative_step() -> None:
    async def main() -> list[EngineStep]:
        async with running(OVERCHUNKED) as (_, url):
            return await collect(engine(url))

    steps = asyncio.run(main())
    assert steps[-1].finished and steps[-1].new_tokens == 0
    assert min(s.new_tokens for s in steps) >= 0


def test_the_worker_streams_such_an_answer_and_serves_on() -> None:
    """Its last piece's count was negative, which TokenDelta refuses: the worker stopped."""
    consumer, producer, starts = FakeConsumer(), FakeProducer(), MemoryStarts()
    consumer.add(STANDARD, [work(Lane.STANDARD, 0, stream=True), work(Lane.STANDARD, 1)])

    async def main() -> None:
        async with running(OVERCHUNKED) as (_, url):
            spec = ModelSpec(name="m", engine="openai", url=url, max_inflight=4)
            eng = OpenAIEngine(spec, retry=FAST)
            worker = Worker(
                spec, eng, cast(Any, consumer), cast(Any, producer), worker_id="w",
                commit_interval_s=0.01, starts=starts, max_starts=3,
            )  # fmt: skip
            stop = asyncio.Event()
            running_worker = asyncio.create_task(worker.run(stop))
            await until(lambda: consumer.committed.get(STANDARD) == 2)
            stop.set()
            await running_worker
            await eng.abort_all()

    asyncio.run(main())
    completions = producer.completions()
    assert sorted(c.work.request.correlation_id for c in completions) == [
        "standard-0",
        "standard-1",
    ]
    assert all(c.error is None for c in completions)
    assert producer.deltas()[-1].finish_reason == "stop"


def test_a_suspect_cancelled_while_it_waits_lets_the_others_run() -> None:
    """Those queued behind it waited for some other generation to end."""

    async def main() -> None:
        solo, release, entered = Solo(), asyncio.Event(), asyncio.Event()

        async def long() -> None:
            async with solo.shared():
                await release.wait()

        async def suspect() -> None:
            async with solo.alone():
                pass

        async def after() -> None:
            async with solo.shared():
                entered.set()

        running = asyncio.create_task(long())
        await asyncio.sleep(0)
        waiting = asyncio.create_task(suspect())
        await asyncio.sleep(0)
        queued = asyncio.create_task(after())
        await asyncio.sleep(0)
        assert solo.suspects == 1 and not entered.is_set()
        waiting.cancel()
        async with asyncio.timeout(10):
            await entered.wait()  # while the long one still runs
        assert not running.done() and solo.suspects == 0
        release.set()
        await asyncio.gather(running, queued)
        assert (await asyncio.gather(waiting, return_exceptions=True))[0].__class__ is (
            asyncio.CancelledError
        )

    asyncio.run(main())


class _Polled(FakeConsumer):
    """Counts the fetches made while every assigned partition is paused."""

    def __init__(self) -> None:
        super().__init__()
        self.paused_polls = 0

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        everything_paused = self.paused >= set(self.logs)
        batches = await super().getmany(timeout_ms, max_records)
        if everything_paused:
            assert not batches
            self.paused_polls += 1
        return batches


def test_with_every_lane_full_the_worker_still_polls_but_fetches_nothing() -> None:
    """Without a poll aiokafka leaves the group after max_poll_interval_ms, and the
    partitions' records are generated again elsewhere."""
    consumer, producer = _Polled(), FakeProducer()
    for tp, lane in (
        (INTERACTIVE, Lane.INTERACTIVE),
        (STANDARD, Lane.STANDARD),
        (BATCH, Lane.BATCH),
    ):
        consumer.add(tp, [work(lane, i) for i in range(20)])
    slow = FakeEngine()
    slow.gate.clear()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: consumer.paused_polls > 0)
        fetched = dict(consumer.positions)
        await until(lambda: consumer.paused_polls >= 3)
        assert consumer.positions == fetched
        assert slow.running == 2
        stop.set()
        slow.gate.set()

    run_worker(
        consumer, producer, lambda: slow, scenario,
        spec=model_spec(max_inflight=2), lanes=LanePolicy(buffer=4), drain_timeout_s=5,
    )  # fmt: skip
