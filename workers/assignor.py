"""How a model's workers share its lane topics: by partition number, each worker the same
numbers of every lane, kept through a rebalance.

Round robin (aiokafka's default) spreads each lane, but moves half to two thirds of the
partitions of the workers that stay at every resize or rolling restart, and each generation
parked on a moved one is aborted and generated again elsewhere (workers.handover). aiokafka's
sticky assignor keeps them, but balances a member's total only: growing a pool one worker at
a time left one worker every batch partition, and the pool drained a batch backlog no faster
for its new workers. This one gives each member whole partition numbers (p of every lane, so
a lane is spread as the numbers are), keeps each member's numbers up to its share, and hands
out only a leaver's or the few a newcomer needs (a member back from missing rebalances takes
none of those given out since). Lanes of different partition counts go by round robin: whole
numbers would leave a shorter lane to the members holding its low numbers. Work records of
one key land on one number in every lane, so their prompts meet one engine's prefix cache
whichever lane they take.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, NamedTuple, TypeGuard

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

log = logging.getLogger(__name__)


class Claim(NamedTuple):
    """The numbers a member had when it joined, and the round it was given them in."""

    round: int
    numbers: list[int]


NO_CLAIM = Claim(-1, [])
"""A member's claim where its join holds none that reads (a new process, an older release)."""


class LaneAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # aiokafka: untyped here
    """Partition numbers to members, sticky, every lane alike. A member's last numbers travel
    in its join's user data; they live on the class, as aiokafka's assignors keep their
    state, which holds with one group consumer in a process (a worker's)."""

    name = "llmq-lanes"
    version = 0
    held: ClassVar[list[int]] = []
    """The partition numbers this process was last given."""
    round: ClassVar[int] = NO_CLAIM.round
    """The round it was given them in: one more than the latest a join of that rebalance
    carried, so a member that missed rebalances (past its session or rebalance timeout)
    and rejoins with numbers given out since claims them in an older round than who holds
    them now."""

    @classmethod
    def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        claim = json.dumps({"round": cls.round, "held": cls.held}).encode()
        return ConsumerProtocolMemberMetadata(cls.version, list(topics), claim)

    @classmethod
    def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
        cls.held = sorted({tp.partition for tp in assignment.partitions()})
        given = _read(assignment.user_data).get("round")
        cls.round = given if _is_round(given) else NO_CLAIM.round

    @classmethod
    def assign(
        cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        claims = {member_id: _claim(metadata) for member_id, metadata in members.items()}
        latest = max((claim.round for claim in claims.values()), default=NO_CLAIM.round)
        stamp = json.dumps({"round": latest + 1}).encode()
        subscriptions = {frozenset(m.subscription) for m in members.values()}
        topics = sorted({topic for subscription in subscriptions for topic in subscription})
        counts = {topic: len(cluster.partitions_for_topic(topic) or ()) for topic in topics}
        if len(subscriptions) != 1:  # not a model's workers of one release: spread them all
            log.warning("members subscribe to different topics: assigning by round robin")
        elif len(set(counts.values())) > 1:  # numbers would leave a shorter lane unspread
            log.warning("lane partition counts differ (%s): assigning by round robin", counts)
        else:
            numbers = share(max(counts.values(), default=0), claims)
            return {
                member_id: ConsumerProtocolMemberAssignment(
                    cls.version, [(topic, owned) for topic in topics], stamp
                )
                for member_id, owned in numbers.items()
            }
        spread: dict[str, ConsumerProtocolMemberAssignment]
        spread = RoundRobinPartitionAssignor.assign(cluster, members)
        return {
            member_id: ConsumerProtocolMemberAssignment(cls.version, given.assignment, stamp)
            for member_id, given in spread.items()
        }


def share(partitions: int, claims: Mapping[str, Claim]) -> dict[str, list[int]]:
    """Partition numbers 0..partitions-1 for each member of `claims` (what each had): each
    member's share is within one of every other's; a number several claim goes to the claim
    of the latest round (ties: the first in member order), so a member back with numbers given
    out since takes none of them; a member keeps what it won up to its share (those that won
    the most first to the larger shares); the rest go out one at a time to the member holding
    fewest."""
    order = sorted(claims)
    if not order:
        return {}
    winners: dict[int, str] = {}
    for member in sorted(order, key=lambda m: -claims[m].round):  # a stable sort: ties in order
        for number in claims[member].numbers:
            if number in range(partitions):
                winners.setdefault(number, member)
    won: dict[str, list[int]] = {member: [] for member in order}
    for number, member in sorted(winners.items()):
        won[member].append(number)
    base, larger = divmod(partitions, len(order))
    by_won = sorted(order, key=lambda m: -len(won[m]))
    cap = {member: base + (rank < larger) for rank, member in enumerate(by_won)}
    owned = {member: won[member][: cap[member]] for member in order}
    taken = {number for numbers in owned.values() for number in numbers}
    for number in range(partitions):
        if number not in taken:
            fewest = min((m for m in order if len(owned[m]) < cap[m]), key=lambda m: len(owned[m]))
            owned[fewest].append(number)
    return {member: sorted(numbers) for member, numbers in owned.items()}


def _claim(metadata: ConsumerProtocolMemberMetadata) -> Claim:
    """A member's claim, from its join; none where it does not read."""
    claim = _read(metadata.user_data)
    given, numbers = claim.get("round"), claim.get("held")
    if not _is_round(given) or not isinstance(numbers, list):
        return NO_CLAIM
    return Claim(given, numbers) if all(isinstance(n, int) for n in numbers) else NO_CLAIM


def _is_round(given: object) -> TypeGuard[int]:
    """Whether `given` can be a round: an int from NO_CLAIM's up to what JSON's readers all
    take whole (a join's round of 4,300 digits, one more, no longer dumped: every leader in
    turn failed the rebalance)."""
    return type(given) is int and NO_CLAIM.round <= given < 2**53


def _read(user_data: bytes | None) -> dict[str, Any]:
    """The JSON object in user data; empty where there is none (an older release's list)."""
    try:
        read = json.loads(user_data or b"{}")
    except ValueError:
        return {}
    return read if isinstance(read, dict) else {}
