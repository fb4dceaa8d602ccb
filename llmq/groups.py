"""Kafka consumer groups as llmq's apps see them: how many members each has now, and
whether it exists at all."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code

ERROR, GROUP, STATE, MEMBERS = 0, 1, 2, 5
"""Where a group's error code, id, state and members are in a DescribeGroups response entry
(every version llmq meets)."""
EMPTY, DEAD = "Empty", "Dead"
"""Kafka's states of a group without members: one that keeps its committed offsets (its
members left, e.g. a pool scaled to zero), and one that does not exist."""


class Group(NamedTuple):
    """One consumer group now."""

    members: int
    state: str
    """Kafka's: Stable, PreparingRebalance, CompletingRebalance, Empty or Dead."""


async def describe_groups(admin: AIOKafkaAdminClient, groups: Sequence[str]) -> dict[str, Group]:
    """Each group's members and state (Dead for one that does not exist). Raises KafkaError,
    also for a group Kafka answers with an error (its coordinator moving or still loading
    after a broker restart): such an answer has no state and no members, which is not a
    group without workers.

    One group per request: aiokafka 0.14 decodes a DescribeGroups v3 answer with the v2
    schema, which lacks each group's trailing authorized_operations field, so an answer
    about two groups or more fails ("Buffer underrun") and drops the connection.
    """
    answers = await asyncio.gather(*(admin.describe_consumer_groups([g]) for g in groups))
    for g in (g for responses in answers for r in responses for g in r.groups):
        if g[ERROR]:
            raise for_code(g[ERROR])(f"describing consumer group {g[GROUP]}")
    found = {
        g[GROUP]: Group(len(g[MEMBERS]), g[STATE])
        for responses in answers
        for r in responses
        for g in r.groups
    }
    return {group: found.get(group, Group(0, DEAD)) for group in groups}
