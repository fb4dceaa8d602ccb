"""Placing an asyncio consumer without a group: every partition of its topics, from their
ends or from a moment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition


async def assigned(
    consumer: AIOKafkaConsumer, topics: Sequence[str], timeout_s: float = 30.0
) -> list[TopicPartition]:
    """Every partition of `topics`, once the started consumer (subscribed to them without a
    group, so it is given all their partitions) holds them."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = consumer.assignment()
        missing = set(topics) - {tp.topic for tp in held}
        if not missing:
            return sorted(held, key=lambda tp: (tp.topic, tp.partition))
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"topic(s) {', '.join(sorted(missing))} not found within {timeout_s:.0f} s: "
                "is the stack up, and were its topics created (llmq topics --create)?"
            )
        await asyncio.sleep(0.05)


async def at_end(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> None:
    """Read from the ends of `topics` as of now: resolved at once, so nothing published
    after this returns is skipped."""
    partitions = await assigned(consumer, topics)
    await consumer.seek_to_end(*partitions)
    for tp in partitions:
        await consumer.position(tp)


async def since(consumer: AIOKafkaConsumer, topics: Sequence[str], at: float) -> None:
    """Read `topics` from the first record published at Unix time `at` or later."""
    partitions = await assigned(consumer, topics)
    offsets = await consumer.offsets_for_times(dict.fromkeys(partitions, int(at * 1000)))
    for tp in partitions:
        found = offsets.get(tp)
        if found is None:
            await consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, found.offset)
