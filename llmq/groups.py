"""Kafka consumer groups as llmq's apps see them: how many members each has now."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient

MEMBERS = 5
"""Where a group's members are in a DescribeGroups response entry (every version llmq meets)."""


async def group_sizes(admin: AIOKafkaAdminClient, groups: Sequence[str]) -> dict[str, int]:
    """Members of each group (0 for one that is empty or unknown). Raises KafkaError."""
    responses = await admin.describe_consumer_groups(list(groups))
    sizes = {g[1]: len(g[MEMBERS]) for r in responses for g in r.groups}
    return {group: sizes.get(group, 0) for group in groups}
