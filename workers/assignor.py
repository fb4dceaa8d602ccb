"""How a model's workers share its lane topics: by partition number, each worker the same
numbers of every lane, kept through a rebalance.

Round robin (aiokafka's default) spreads each lane, but moves half to two thirds of the
partitions of the workers that stay at every resize or rolling restart, and each generation
parked on a moved one is aborted and generated again elsewhere (workers.handover). aiokafka's
sticky assignor keeps them, but balances a member's total only: growing a pool one worker at
a time left one worker every batch partition, and the pool drained a batch backlog no faster
for its new workers. This one gives each member whole partition numbers (p of every lane, so
a lane is spread as the numbers are), keeps each member's numbers up to its share, and hands
out only a leaver's or the few a newcomer needs. Work records of one key land on one number
in every lane, so their prompts meet one engine's prefix cache whichever lane they take.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import ClassVar

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

log = logging.getLogger(__name__)


class LaneAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # aiokafka: untyped here
    """Partition numbers to members, sticky, every lane alike. A member's last numbers travel
    in its join's user data; they live on the class, as aiokafka's assignors keep their
    state, which holds with one group consumer in a process (a worker's)."""

    name = "llmq-lanes"
    version = 0
    held: ClassVar[list[int]] = []
    """The partition numbers this process was last given."""

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        held = json.dumps(cls.held).encode()
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), held)

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        cls.held = sorted({tp.partition for tp in assignment.partitions()})

    @classmethod
    def assign(
        cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        subscriptions = {frozenset(m.subscription) for m in members.values()}
        if len(subscriptions) != 1:  # not a model's workers of one release: spread them all
            log.warning("members subscribe to different topics: assigning by round robin")
            spread: dict[str, ConsumerProtocolMemberAssignment]
            spread = RoundRobinPartitionAssignor.assign(cluster, members)
            return spread
        topics = sorted(subscriptions.pop())
        counts = {topic: len(cluster.partitions_for_topic(topic) or ()) for topic in topics}
        numbers = share(max(counts.values(), default=0), _last_held(members))
        return {
            member_id: ConsumerProtocolMemberAssignment(
                cls.version,
                [(topic, [p for p in owned if p < counts[topic]]) for topic in topics],
                b"",
            )
            for member_id, owned in numbers.items()
        }


def share(partitions: int, held: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """Partition numbers 0..partitions-1 for each member of `held` (what each had): each
    member's share is within one of every other's; a member keeps what it had up to its
    share (those with the most first to the larger shares); a number two claimed goes to
    the first in member order; the rest go out one at a time to the member holding fewest."""
    order = sorted(held)
    if not order:
        return {}
    base, larger = divmod(partitions, len(order))
    by_claims = sorted(order, key=lambda m: -len({p for p in held[m] if p < partitions}))
    cap = {member: base + (rank < larger) for rank, member in enumerate(by_claims)}
    owned: dict[str, list[int]] = {member: [] for member in order}
    taken: set[int] = set()
    for member in order:
        for number in sorted(set(held[member])):
            if number < partitions and number not in taken and len(owned[member]) < cap[member]:
                owned[member].append(number)
                taken.add(number)
    for number in range(partitions):
        if number not in taken:
            fewest = min((m for m in order if len(owned[m]) < cap[m]), key=lambda m: len(owned[m]))
            owned[fewest].append(number)
    return {member: sorted(numbers) for member, numbers in owned.items()}


def _last_held(members: Mapping[str, ConsumerProtocolMemberMetadata]) -> dict[str, list[int]]:
    """Each member's last numbers, from its join; none where they do not read."""
    held: dict[str, list[int]] = {}
    for member_id, metadata in members.items():
        try:
            numbers = json.loads(metadata.user_data or b"[]")
        except ValueError:
            numbers = []
        valid = isinstance(numbers, list) and all(isinstance(n, int) for n in numbers)
        held[member_id] = numbers if valid else []
    return held
