"""Where a worker's group starts the partitions nothing was taken from: their positions,
committed so that the group outlives its last worker (Kafka's Empty, which the front door
sends work to, not Dead, which it refuses: Kafka deletes a group without members or offsets
at its next cleanup). Looked up in the background, each partition on its own, so that a
Kafka slow to answer for one holds up neither the worker's loop nor the others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

START_LOOKUP_S = 5.0
"""The longest a lookup waits to learn where the group starts one partition (its committed
offset and position): one Kafka does not answer for is asked at the next lookup."""
StartLookup: TypeAlias = asyncio.Task[dict[TopicPartition, int | None]]
"""Where the group starts some partitions: None for one it has an offset for, else the
consumer's position (`GroupStarts._look_up`)."""


class GroupStarts:
    """The partitions a worker's group has an offset for, and the starting positions of the
    others, from a lookup in the background. An unexpected error of a lookup goes to
    `failed` (it stops the worker)."""

    def __init__(self, consumer: AIOKafkaConsumer, failed: Callable[[BaseException], None]) -> None:
        self._consumer = consumer
        self._failed = failed
        self._has_offset: set[TopicPartition] = set()
        """Partitions the group has an offset for (committed by this worker, or found)."""
        self._rebalances = 0
        """Revocations and assignments so far: a lookup begun before the last one is stale."""
        self._lookup: tuple[int, StartLookup] | None = None
        """The lookup in the background, and `_rebalances` as it began."""

    def committed(self, tps: Iterable[TopicPartition]) -> None:
        """The worker committed offsets of these partitions."""
        self._has_offset.update(tps)

    def rebalanced(self) -> None:
        """Partitions were revoked or assigned: a lookup begun before is stale."""
        self._rebalances += 1

    def positions(
        self, taken: Collection[TopicPartition], *, stopping: bool
    ) -> dict[TopicPartition, int]:
        """The position of each assigned partition nothing was `taken` from and the group
        has no offset for: where auto_offset_reset started it (the log's start), so nothing
        is skipped (one something was taken from commits the worker's own offset: never past
        a record in flight). From the last lookup; this starts the next unless `stopping`. A
        lookup that a rebalance came during is dropped: a partition revoked and assigned
        back has lost its buffered records, so a position read before would skip records
        never served."""
        found = self._looked_up()
        self._has_offset.update(tp for tp, start in found.items() if start is None)
        unknown = self._consumer.assignment() - self._has_offset - set(taken)
        starting = {tp: start for tp, start in found.items() if tp in unknown and start is not None}
        if self._lookup is None and not stopping and unknown - starting.keys():
            lookup = asyncio.create_task(self._look_up(unknown - starting.keys()))
            self._lookup = (self._rebalances, lookup)
        return starting

    async def end(self) -> None:
        """Stop the lookup still running (the worker stops); an unexpected error it ended
        with goes to `failed`."""
        if self._lookup is None:
            return
        _, lookup = self._lookup
        self._lookup = None
        lookup.cancel()
        await asyncio.wait({lookup})
        if not lookup.cancelled() and (error := lookup.exception()) is not None:
            self._failed(error)

    def _looked_up(self) -> dict[TopicPartition, int | None]:
        """What the lookup found, once it is over, unless a rebalance came since it began."""
        if self._lookup is None or not self._lookup[1].done():
            return {}
        began, lookup = self._lookup
        self._lookup = None
        error = lookup.exception()
        if error is not None:
            self._failed(error)
            return {}
        if began != self._rebalances:
            log.info("dropped a lookup of starting positions that a rebalance came during")
            return {}
        return lookup.result()

    async def _look_up(self, tps: set[TopicPartition]) -> dict[TopicPartition, int | None]:
        """Where the group starts each of `tps` (StartLookup), for those Kafka says in time;
        the others are asked again at the next lookup."""
        order = list(tps)
        found = await asyncio.gather(*map(self._start_of, order), return_exceptions=True)
        starts: dict[TopicPartition, int | None] = {}
        unseen = []
        for tp, start in zip(order, found, strict=True):
            if isinstance(start, KafkaError | TimeoutError):
                unseen.append(f"{tp.topic}/{tp.partition}: {start!r}")
            elif isinstance(start, BaseException):
                raise start
            else:
                starts[tp] = start
        if unseen:
            log.warning(
                "cannot see where the group starts its partitions, will retry: %s",
                ", ".join(sorted(unseen)),
            )
        return starts

    async def _start_of(self, tp: TopicPartition) -> int | None:
        """None where the group has an offset for `tp`, else the consumer's position in it;
        within START_LOOKUP_S (aiokafka retries until a coordinator and a leader answer)."""
        async with asyncio.timeout(START_LOOKUP_S):
            if await self._consumer.committed(tp) is not None:
                return None
            return int(await self._consumer.position(tp))
