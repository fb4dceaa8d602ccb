"""The workers' group (workers.assignor) spreads every lane over its members and hands a
worker that stays the partitions it had through a rebalance (a pool resized, a rolling
restart): the generations it parked on them go on (workers.handover) instead of being
aborted and generated again elsewhere. Each rebalance runs as aiokafka runs it, through the
protocol's encoding, each member with its own copy of the assignor's class state."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.protocol import ConsumerProtocol, ConsumerProtocolMemberMetadata
from aiokafka.protocol.metadata import MetadataResponse_v0

from schemas.catalog import Catalog
from schemas.names import DEFAULT_PARTITIONS, work_topics
from workers.__main__ import ASSIGNORS, kafka_clients
from workers.assignor import LaneAssignor, share
from workers.settings import WorkerSettings

pytestmark = pytest.mark.timeout(30)

TOPICS = work_topics("m")


class Member:
    """A worker process in the group: its own copy of the assignor's class state (the
    numbers it was last given, which its join carries), as a process of its own has."""

    def __init__(self) -> None:
        self.assignor: Any = type("Assignor", (LaneAssignor,), {"held": []})
        self.held: set[TopicPartition] = set()


def _cluster(partitions: int = DEFAULT_PARTITIONS) -> ClusterMetadata:
    """The lane topics of one model as the broker's metadata answer describes them."""
    cluster = ClusterMetadata()
    replicas = [(0, p, 0, [0], [0]) for p in range(partitions)]
    topics = [(0, topic, replicas) for topic in TOPICS]
    cluster.update_metadata(MetadataResponse_v0(brokers=[(0, "kafka", 9092)], topics=topics))
    return cluster


def _rebalance(group: dict[str, Member], partitions: int = DEFAULT_PARTITIONS) -> None:
    """One rebalance: every member joins with its metadata, the leader (the first) assigns,
    every member is given its own assignment. Every partition goes to one member, and each
    lane is spread: no member holds two more of a lane than another."""
    joins = {
        member_id: ConsumerProtocol.METADATA.decode(member.assignor.metadata(TOPICS).encode())
        for member_id, member in group.items()
    }
    leader = next(iter(group.values()))
    assignments = leader.assignor.assign(_cluster(partitions), joins)
    for member_id, member in group.items():
        assignment = ConsumerProtocol.ASSIGNMENT.decode(assignments[member_id].encode())
        member.assignor.on_assignment(assignment)
        member.held = set(assignment.partitions())
    every = [tp for member in group.values() for tp in member.held]
    assert len(every) == len(set(every)) == len(TOPICS) * partitions
    for topic in TOPICS:
        sizes = [sum(tp.topic == topic for tp in member.held) for member in group.values()]
        assert max(sizes) - min(sizes) <= 1, (topic, sizes)


def _steps(sizes: list[int], rolled: bool = False) -> list[list[str]]:
    """The group at each step of a pool taking these sizes, one worker joining or leaving at
    a time (the newest leaves first); `rolled`: then each member replaced in turn."""
    steps: list[list[str]] = []
    members: list[str] = []
    made = 0
    for size in sizes:
        while len(members) != size:
            if len(members) < size:
                members.append(f"worker-{made}")
                made += 1
            else:
                members.pop()
            steps.append(list(members))
    for old in list(members) if rolled else []:
        members = [m for m in members if m != old] + [f"worker-{made}"]
        made += 1
        steps.append(list(members))
    return steps


@pytest.mark.parametrize(
    ("sizes", "rolled"),
    [([1, 4, 2], False), ([3, 1], False), ([3], True), ([2, 3, 2], False)],
    ids=["grown-then-shrunk", "shrunk", "rolling-restart", "one-up-one-down"],
)
def test_a_worker_that_stays_keeps_the_partitions_it_had_and_every_lane_is_spread(
    sizes: list[int], rolled: bool
) -> None:
    """Scaled down, a member that stays keeps all it had; scaled up, what it keeps was all
    its own. aiokafka's sticky assignor kept them too, but balanced totals only: grown one
    worker at a time, one worker held every batch partition."""
    members: dict[str, Member] = {}
    before: dict[str, set[TopicPartition]] = {}
    for step in _steps(sizes, rolled):
        for name in step:
            members.setdefault(name, Member())
        _rebalance({name: members[name] for name in step})
        for name in set(before) & set(step):
            held, had = members[name].held, before[name]
            assert had <= held if len(step) <= len(before) else held <= had, (name, step)
        before = {name: members[name].held for name in step}


def test_a_member_holds_the_same_numbers_of_every_lane() -> None:
    """So that records of one key, whichever lane they take, meet one engine's prefix cache."""
    members = {f"worker-{i}": Member() for i in range(3)}
    _rebalance(members)
    for member in members.values():
        numbers = Counter(tp.partition for tp in member.held)
        assert set(numbers.values()) == {len(TOPICS)}


@pytest.mark.parametrize(
    ("partitions", "held", "shared"),
    [
        (4, {"a": [], "b": []}, {"a": [0, 2], "b": [1, 3]}),
        (4, {"a": [0, 1, 2, 3], "b": []}, {"a": [0, 1], "b": [2, 3]}),
        (4, {"a": [0, 2], "b": [1, 3], "c": []}, {"a": [0, 2], "b": [1], "c": [3]}),
        (4, {"a": [0, 1], "b": [1, 2]}, {"a": [0, 1], "b": [2, 3]}),  # 1 claimed twice
        (2, {"a": [0, 5], "b": []}, {"a": [0], "b": [1]}),  # a number past the topics'
    ],
)
def test_share(partitions: int, held: dict[str, list[int]], shared: dict[str, list[int]]) -> None:
    assert share(partitions, held) == shared


def test_a_join_whose_numbers_do_not_read_counts_as_holding_none() -> None:
    joins = {
        "a": ConsumerProtocolMemberMetadata(0, TOPICS, b"not json"),
        "b": ConsumerProtocolMemberMetadata(0, TOPICS, b'{"0": 1}'),
    }
    assigned = LaneAssignor.assign(_cluster(), joins)
    assert sorted(tp.partition for tp in assigned["a"].partitions()) == [0, 0, 0, 2, 2, 2]


def test_the_workers_consumer_offers_those_assignors() -> None:
    spec = Catalog.builtin().get(Catalog.builtin().default)
    assert spec is not None

    async def offered() -> Any:
        producer, consumer = kafka_clients(WorkerSettings(), spec)
        await producer.stop()  # never started: nothing is reached
        await consumer.stop()
        return consumer._partition_assignment_strategy

    assert asyncio.run(offered()) == ASSIGNORS
