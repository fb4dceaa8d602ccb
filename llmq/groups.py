"""Kafka consumer groups as llmq's apps see them: how many members each has now."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient

MEMBERS = 5
"""Where a group's members are in a DescribeGroups response entry (every version llmq meets)."""


async def group_sizes(admin: AIOKafkaAdminClient, groups: Sequence[str]) -> dict[str, int]:
    """Members of each group (0 for one that is empty or unknown). Raises KafkaError.

    One group per request: aiokafka 0.14 decodes a DescribeGroups v3 answer with the v2
    schema, which lacks each group's trailing authorized_operations field, so an answer
    about two groups or more fails ("Buffer underrun") and drops the connection.
    """
    answers = await asyncio.gather(*(admin.describe_consumer_groups([g]) for g in groups))
    sizes = {g[1]: len(g[MEMBERS]) for responses in answers for r in responses for g in r.groups}
    return {group: sizes.get(group, 0) for group in groups}
