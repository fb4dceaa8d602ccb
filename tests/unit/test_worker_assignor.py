"""The workers' group hands a worker that stays in it the partitions it had through a
rebalance (a pool resized, a rolling restart): the generations it parked on them go on
(workers.handover) instead of being aborted and generated again elsewhere."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.protocol import ConsumerProtocol
from aiokafka.protocol.metadata import MetadataResponse_v0

from schemas.catalog import Catalog
from schemas.names import DEFAULT_PARTITIONS, work_topics
from workers.__main__ import ASSIGNORS, kafka_clients
from workers.settings import WorkerSettings

pytestmark = pytest.mark.timeout(30)

TOPICS = work_topics("m")


class Member:
    """A worker process in the group: its own copy of the assignor's class-level state (the
    last assignment it was given, which its join carries), as a process of its own has."""

    def __init__(self) -> None:
        self.assignor: Any = type("Assignor", (ASSIGNORS[0],), {})
        self.held: set[TopicPartition] = set()


def _cluster() -> ClusterMetadata:
    """The work topics of one model as the broker's metadata answer describes them."""
    cluster = ClusterMetadata()
    replicas = [(0, p, 0, [0], [0]) for p in range(DEFAULT_PARTITIONS)]
    topics = [(0, topic, replicas) for topic in TOPICS]
    cluster.update_metadata(MetadataResponse_v0(brokers=[(0, "kafka", 9092)], topics=topics))
    return cluster


def _rebalance(group: dict[str, Member]) -> None:
    """One rebalance as aiokafka runs it, with the protocol the broker picks for workers of
    this release (each votes for its first): every member joins with its metadata, the
    leader (the first) assigns, every member is given its own assignment."""
    joins = {
        member_id: ConsumerProtocol.METADATA.decode(member.assignor.metadata(TOPICS).encode())
        for member_id, member in group.items()
    }
    leader = next(iter(group.values()))
    assignments = leader.assignor.assign(_cluster(), joins)
    for member_id, member in group.items():
        assignment = ConsumerProtocol.ASSIGNMENT.decode(assignments[member_id].encode())
        member.assignor.on_assignment(assignment)
        member.held = set(assignment.partitions())
    every = [tp for member in group.values() for tp in member.held]
    assert len(every) == len(set(every)) == len(TOPICS) * DEFAULT_PARTITIONS
    sizes = [len(member.held) for member in group.values()]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (["a", "b", "c"], ["a", "c"]),  # scaled down: b left
        (["a", "b"], ["a", "b", "c"]),  # scaled up: c came
        (["a", "b", "c"], ["a", "c", "d"]),  # a rolling restart: b replaced by d
    ],
)
def test_a_worker_that_stays_keeps_the_partitions_it_had(
    before: list[str], after: list[str]
) -> None:
    members = {name: Member() for name in {*before, *after}}
    _rebalance({f"worker-{name}": members[name] for name in before})
    had = {name: members[name].held for name in before}
    _rebalance({f"worker-{name}": members[name] for name in after})
    for name in set(before) & set(after):
        held = members[name].held
        # Scaled up, a member gives the newcomer some; what it keeps was all its own.
        assert had[name] <= held if len(after) <= len(before) else held <= had[name], name


def test_the_workers_consumer_offers_those_assignors() -> None:
    spec = Catalog.builtin().get(Catalog.builtin().default)
    assert spec is not None

    async def offered() -> Any:
        producer, consumer = kafka_clients(WorkerSettings(), spec)
        await producer.stop()  # never started: nothing is reached
        await consumer.stop()
        return consumer._partition_assignment_strategy

    assert asyncio.run(offered()) == ASSIGNORS
