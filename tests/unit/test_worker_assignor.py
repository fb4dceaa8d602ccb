"""The workers' group (workers.assignor) spreads every lane over its members and hands a
worker that stays the partitions it had through a rebalance (a pool resized, a rolling
restart): the generations it parked on them go on (workers.handover) instead of being
aborted and generated again elsewhere. Each rebalance runs as aiokafka runs it, through the
protocol's encoding, each member with its own copy of the assignor's class state."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.protocol import ConsumerProtocol, ConsumerProtocolMemberMetadata
from aiokafka.protocol.metadata import MetadataResponse_v0

from schemas.catalog import Catalog
from schemas.names import DEFAULT_PARTITIONS, work_topics
from workers.__main__ import ASSIGNORS, kafka_clients
from workers.assignor import Claim, LaneAssignor, share
from workers.settings import WorkerSettings

pytestmark = pytest.mark.timeout(30)

TOPICS = work_topics("m")
COUNTS = (DEFAULT_PARTITIONS,) * len(TOPICS)


class Member:
    """A worker process in the group: its own copy of the assignor's class state (the
    numbers it was last given and their round, which its join carries), as a process of its
    own has."""

    def __init__(self) -> None:
        self.assignor: Any = type("Assignor", (LaneAssignor,), {"held": [], "round": -1})
        self.held: set[TopicPartition] = set()


def _cluster(counts: Sequence[int] = COUNTS) -> ClusterMetadata:
    """The lane topics of one model, of these partition counts, as the broker's metadata
    answer describes them."""
    cluster = ClusterMetadata()
    topics = [
        (0, topic, [(0, p, 0, [0], [0]) for p in range(count)])
        for topic, count in zip(TOPICS, counts, strict=True)
    ]
    cluster.update_metadata(MetadataResponse_v0(brokers=[(0, "kafka", 9092)], topics=topics))
    return cluster


def _rebalance(group: dict[str, Member], counts: Sequence[int] = COUNTS) -> None:
    """One rebalance: every member joins with its metadata, the leader (the first) assigns,
    every member is given its own assignment. Every partition goes to one member, and each
    lane is spread: no member holds two more of a lane than another."""
    joins = {
        member_id: ConsumerProtocol.METADATA.decode(member.assignor.metadata(TOPICS).encode())
        for member_id, member in group.items()
    }
    leader = next(iter(group.values()))
    assignments = leader.assignor.assign(_cluster(counts), joins)
    for member_id, member in group.items():
        assignment = ConsumerProtocol.ASSIGNMENT.decode(assignments[member_id].encode())
        member.assignor.on_assignment(assignment)
        member.held = set(assignment.partitions())
    every = [tp for member in group.values() for tp in member.held]
    assert len(every) == len(set(every)) == sum(counts)
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


@pytest.mark.parametrize("back", ["worker-0-back", "worker-9"], ids=["first", "last"])
def test_a_member_back_from_missing_a_rebalance_takes_nothing_from_those_that_stayed(
    back: str,
) -> None:
    """Past its session (or rebalance) timeout a worker is dropped, and the group shares its
    numbers without it; it rejoins, under a new member id (`back`: first or last in member
    order), claiming the numbers it had then. Those that stayed keep what they had up to
    their shares, and the larger shares go to them: each move aborts the generations parked
    there (workers.handover)."""
    group = {f"worker-{i}": Member() for i in range(3)}
    _rebalance(group)
    dropped = group.pop("worker-0")
    _rebalance(group)
    before = {name: {tp.partition for tp in member.held} for name, member in group.items()}
    _rebalance({back: dropped, **group})
    base, larger = divmod(DEFAULT_PARTITIONS, len(group) + 1)
    most = sum(min(len(had), base) for had in before.values())
    most += min(larger, sum(len(had) > base for had in before.values()))
    kept = [had & {tp.partition for tp in group[name].held} for name, had in before.items()]
    assert sum(map(len, kept)) == most, (before, kept)


@pytest.mark.parametrize("steps", [_steps([1, 5, 2]), _steps([3], rolled=True)])
def test_lanes_of_different_partition_counts_are_shared_by_round_robin(
    steps: list[list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """Whole numbers would leave a shorter lane's partitions to the members holding its low
    numbers (lanes of 12, 12 and 4: one of two members every batch partition)."""
    members: dict[str, Member] = {}
    with caplog.at_level(logging.WARNING, logger="workers.assignor"):
        for step in steps:
            _rebalance({name: members.setdefault(name, Member()) for name in step}, (12, 12, 4))
    assert f"'{TOPICS[-1]}': 4" in caplog.records[0].getMessage()


def test_a_member_holds_the_same_numbers_of_every_lane() -> None:
    """So that records of one key, whichever lane they take, meet one engine's prefix cache."""
    members = {f"worker-{i}": Member() for i in range(3)}
    _rebalance(members)
    for member in members.values():
        numbers = Counter(tp.partition for tp in member.held)
        assert set(numbers.values()) == {len(TOPICS)}


@pytest.mark.parametrize(
    ("partitions", "claims", "shared"),
    [
        (4, {"a": Claim(-1, []), "b": Claim(-1, [])}, {"a": [0, 2], "b": [1, 3]}),
        (4, {"a": Claim(0, [0, 1, 2, 3]), "b": Claim(-1, [])}, {"a": [0, 1], "b": [2, 3]}),
        (
            4,
            {"a": Claim(0, [0, 2]), "b": Claim(0, [1, 3]), "c": Claim(-1, [])},
            {"a": [0, 2], "b": [1], "c": [3]},
        ),
        # 1 claimed twice: in one round (the first in member order keeps it), in two (the later)
        (4, {"a": Claim(0, [0, 1]), "b": Claim(0, [1, 2])}, {"a": [0, 1], "b": [2, 3]}),
        (4, {"a": Claim(0, [0, 1]), "b": Claim(1, [1, 2])}, {"a": [0, 3], "b": [1, 2]}),
        (2, {"a": Claim(0, [0, 5]), "b": Claim(-1, [])}, {"a": [0], "b": [1]}),  # past the topics'
    ],
)
def test_share(partitions: int, claims: dict[str, Claim], shared: dict[str, list[int]]) -> None:
    assert share(partitions, claims) == shared


def test_numbers_claimed_again_from_an_older_round_stay_with_who_holds_them() -> None:
    """`a` was given 5, 6 and 7 in round 3, missed the rebalances since, and is back: they
    stay with those given them in round 5 (`d` keeps 7), and `a`, having won none, gets no
    larger share than the base."""
    claims = {
        "a": Claim(3, [5, 6, 7]),
        "b": Claim(5, [0, 1, 2]),
        "c": Claim(5, [3, 4, 5]),
        "d": Claim(5, [6, 7, 8]),
    }
    shared = share(9, claims)
    assert shared["d"] == [6, 7] and shared["c"] == [3, 4]
    assert len(shared["a"]) <= 9 // len(claims)


def test_a_join_whose_numbers_do_not_read_counts_as_holding_none() -> None:
    """Nor does an older release's (a bare list of numbers, `c`'s)."""
    joins = {
        "a": ConsumerProtocolMemberMetadata(0, TOPICS, b"not json"),
        "b": ConsumerProtocolMemberMetadata(0, TOPICS, b'{"round": 2, "held": ["0"]}'),
        "c": ConsumerProtocolMemberMetadata(0, TOPICS, b"[0, 1, 2, 3]"),
    }
    assigned = LaneAssignor.assign(_cluster(), joins)
    numbers = {m: sorted({tp.partition for tp in a.partitions()}) for m, a in assigned.items()}
    assert numbers == {"a": [0, 3], "b": [1], "c": [2]}


def test_a_join_of_a_round_past_any_leaves_the_group_assigned() -> None:
    """A round of 4,300 digits read, and one more could not be dumped: every leader in turn
    failed the rebalance, and the model's workers with it. It counts as no claim."""
    huge = b'{"round": ' + b"9" * 4300 + b', "held": [0, 1, 2, 3]}'
    joins = {
        "a": ConsumerProtocolMemberMetadata(0, TOPICS, huge),
        "b": ConsumerProtocolMemberMetadata(0, TOPICS, b'{"round": true, "held": [0, 1]}'),
    }
    assigned = LaneAssignor.assign(_cluster(), joins)
    numbers = {m: sorted({tp.partition for tp in a.partitions()}) for m, a in assigned.items()}
    assert numbers == {"a": [0, 2], "b": [1, 3]}
    assert json.loads(assigned["a"].user_data) == {"round": 0}


def test_the_workers_consumer_offers_those_assignors() -> None:
    spec = Catalog.builtin().get(Catalog.builtin().default)
    assert spec is not None

    async def offered() -> Any:
        producer, consumer = kafka_clients(WorkerSettings(), spec)
        await producer.stop()  # never started: nothing is reached
        await consumer.stop()
        return consumer._partition_assignment_strategy

    assert asyncio.run(offered()) == ASSIGNORS
