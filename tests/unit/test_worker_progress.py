"""The progress a worker commits with its offsets (schemas/work.py progress): where it
reads and how many records run, written when they change though the offset does not, as
aiokafka takes an offset with metadata; and no commit while nothing changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka import TopicPartition

from schemas.request import ChatBody
from schemas.work import progress
from tests.unit.worker_fakes import (
    STANDARD,
    FakeConsumer,
    FakeEngine,
    FakeProducer,
    model_spec,
    run_worker,
    until,
    work,
)
from workers.engine import EngineStep
from workers.worker import Worker

pytestmark = pytest.mark.timeout(30)


class HeadHeld(FakeEngine):
    """The first generation (the partition's oldest record) goes on until `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def generate(
        self,
        request_id: str,
        body: ChatBody,
        priority: int,
        tenant: str | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[EngineStep]:
        first = not self.started
        async for step in super().generate(request_id, body, priority, tenant, deadline):
            if first:
                await self.release.wait()
            yield step


class Counted(FakeConsumer):
    """Counts the commits asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    async def commit(self, offsets: dict[TopicPartition, int | tuple[int, str]]) -> None:
        self.commits += 1
        await super().commit(offsets)


def test_the_worker_commits_its_progress_behind_a_long_generation() -> None:
    """Record 0 runs on while 1 to 5 are done: the offset stays at 0, the progress moves
    (read 6, one running); both move once 0 is done, and then nothing is committed."""
    consumer, producer = Counted(), FakeProducer()
    consumer.add(STANDARD, [work(n=n) for n in range(6)])
    engine = HeadHeld()
    seen: list[tuple[int, str]] = []

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        held = progress(6, 1)
        await until(lambda: consumer.metadata.get(STANDARD) == held)
        seen.append((consumer.committed[STANDARD], consumer.metadata[STANDARD]))
        engine.release.set()
        done = progress(6, 0)
        await until(lambda: consumer.metadata.get(STANDARD) == done)
        commits = consumer.commits
        await asyncio.sleep(0.1)  # ten commit intervals, nothing new
        seen.append((consumer.committed[STANDARD], str(consumer.commits - commits)))
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, spec=model_spec(max_inflight=2))
    assert seen == [(0, progress(6, 1)), (6, "0")]
