"""A worker keeps its model's consumer group for a pool at zero: with no work at all it
commits where each partition starts, so its group outlives it (Empty, with its offsets:
the front door sends the model's work there, and the first record brings a worker back)
instead of going Dead at Kafka's next cleanup (the front door refuses a Dead group's model).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from llmq.groups import DEAD, EMPTY, Group, describe_groups
from schemas.catalog import ModelSpec
from schemas.names import TopicSpec, work_topics, worker_group
from schemas.settings import ServiceSettings
from tests.unit.worker_fakes import FakeEngine, MemoryStarts
from tools.topics import ensure_topics
from workers.__main__ import kafka_clients
from workers.settings import WorkerSettings
from workers.worker import Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PARTITIONS = 2
COMMIT_INTERVAL_S = 0.2
WAIT_S = 30.0


async def _offsets(admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    found = await admin.list_consumer_group_offsets(group)
    return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}


async def _until_offsets(
    admin: AIOKafkaAdminClient, group: str, partitions: set[TopicPartition]
) -> dict[TopicPartition, int]:
    """The group's offsets once there is one for each of `partitions`, or after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = await _offsets(admin, group)
        if set(found) == partitions or time.monotonic() > deadline:
            return found
        await asyncio.sleep(COMMIT_INTERVAL_S)


async def _until_state(admin: AIOKafkaAdminClient, group: str, state: str) -> Group:
    """The group once Kafka says it is in `state`, or as it is after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = (await describe_groups(admin, [group]))[group]
        if found.state == state or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


def test_a_worker_that_served_nothing_leaves_its_group_empty_with_its_offsets(
    service_settings: ServiceSettings,
) -> None:
    bootstrap = service_settings.kafka_bootstrap
    # A model no worker served: its topics are new and empty, and it has no group.
    spec = ModelSpec(name=f"kept-{uuid.uuid4().hex[:8]}", source="unused")
    topics = work_topics(spec.name)
    outcome = ensure_topics(bootstrap, [TopicSpec(t, PARTITIONS) for t in topics], timeout_s=60)
    assert sorted(outcome.created) == sorted(topics)
    partitions = {TopicPartition(t, p) for t in topics for p in range(PARTITIONS)}
    group = worker_group(spec.name)
    settings = WorkerSettings(kafka_bootstrap=bootstrap, commit_interval_s=COMMIT_INTERVAL_S)

    async def serve_nothing() -> tuple[
        Group, dict[TopicPartition, int], Group, dict[TopicPartition, int]
    ]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            before = (await describe_groups(admin, [group]))[group]
            producer, consumer = kafka_clients(settings, spec)
            worker = Worker(
                spec,
                FakeEngine(),  # never asked: there is no work
                consumer,
                producer,
                worker_id=f"kept-{uuid.uuid4().hex[:8]}",
                commit_interval_s=COMMIT_INTERVAL_S,
                drain_timeout_s=1.0,
                starts=MemoryStarts(),
            )
            stop = asyncio.Event()
            await producer.start()
            try:
                consumer.subscribe(topics, listener=worker.rebalance_listener())
                await consumer.start()
                try:
                    running = asyncio.create_task(worker.run(stop))
                    try:  # committed soon after the assignment, while the worker serves
                        serving = await _until_offsets(admin, group, partitions)
                    finally:
                        stop.set()
                        await running
                finally:
                    await consumer.stop()
            finally:
                await producer.stop()
            after = await _until_state(admin, group, EMPTY)
            return before, serving, after, await _offsets(admin, group)
        finally:
            await admin.close()

    before, serving, after, kept = asyncio.run(serve_nothing())
    assert before == Group(0, DEAD)
    start = dict.fromkeys(partitions, 0)  # each log's start: nothing is skipped
    assert serving == start, "each partition's start, committed while it serves"
    assert after == Group(0, EMPTY), "its last worker left, and the group stays"
    assert kept == start
