"""A worker counts the work records it dead-letters (llmq_worker_dead_letters_total), by a
bounded reason, so that the dashboard's dead letters panel shows them beside the stream
processor's."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from schemas.names import DLQ
from tests.unit.worker_fakes import (
    STANDARD,
    FakeConsumer,
    FakeEngine,
    FakeProducer,
    MemoryStarts,
    run_worker,
    until,
    work,
)
from workers.worker import Worker

pytestmark = pytest.mark.timeout(30)


def _dead_letters() -> dict[str, float]:
    return {
        reason: REGISTRY.get_sample_value("llmq_worker_dead_letters_total", {"reason": reason})
        or 0.0
        for reason in ("crash_loop", "unreadable")
    }


def _served(value: bytes, starts: MemoryStarts) -> dict[str, float]:
    """Serve one record to its commit; what each reason's count rose by, and the records
    sent to llmq.dlq."""
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [value])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: consumer.committed.get(STANDARD) == 1)
        stop.set()

    before = _dead_letters()
    run_worker(consumer, producer, FakeEngine, scenario, starts=starts)
    after = _dead_letters()
    rose = {reason: after[reason] - before[reason] for reason in after}
    rose["sent"] = float(sum(topic == DLQ for topic, _ in producer.sent))
    return rose


def test_a_crash_loop_dead_letter_is_counted() -> None:
    starts = MemoryStarts({(STANDARD.topic, 0, 0): 3})  # three starts, three dead workers
    assert _served(work(), starts) == {"crash_loop": 1, "unreadable": 0, "sent": 1}


def test_an_unreadable_work_item_dead_lettered_is_counted() -> None:
    assert _served(b"not a work item", MemoryStarts()) == {
        "crash_loop": 0,
        "unreadable": 1,
        "sent": 1,
    }


def test_a_work_item_answered_is_no_dead_letter() -> None:
    assert _served(work(), MemoryStarts()) == {"crash_loop": 0, "unreadable": 0, "sent": 0}
