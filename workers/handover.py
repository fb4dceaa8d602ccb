"""Generations that outlive a rebalance's drain bound: kept running through it, and kept
for good when the assignment gives their partition back to this worker.

Kafka's eager rebalance takes every partition from every member whenever one joins or
leaves; workers.assignor hands them back where they were, but for a leaver's and those a
newcomer needs. Aborting what is still generating at
the drain bound threw that work away: on a slow engine, a pool resized every two minutes
restarted the same 48 generations of 256 tokens from nothing at every resize and
answered none (CI, 2026-12-01). Only a generation whose partition went elsewhere is
aborted and handed back, as soon as the assignment says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import Generic, TypeVar

TP = TypeVar("TP")


class Handover(Generic[TP]):
    """The generations of revoked partitions still running, by (partition, offset)."""

    def __init__(self) -> None:
        self._parked: dict[asyncio.Task[None], tuple[TP, int]] = {}
        self._kept: dict[asyncio.Task[None], tuple[TP, int]] = {}

    def park(self, tasks: Mapping[asyncio.Task[None], tuple[TP, int]]) -> None:
        """Generations whose partitions were revoked, left running until the assignment (one
        that ended already holds nothing: `finished` was called for it)."""
        self._parked.update({task: where for task, where in tasks.items() if not task.done()})

    def assigned(
        self, partitions: Collection[TP]
    ) -> tuple[list[tuple[TP, int]], list[asyncio.Task[None]]]:
        """The parked generations whose partition came back (kept: their offsets), and
        those whose partition went to another worker (to abort)."""
        kept = {t: where for t, where in self._parked.items() if where[0] in partitions}
        moved = [t for t in self._parked if t not in kept]
        self._kept.update(kept)
        self._parked.clear()
        return list(kept.values()), moved

    def holds(self, tp: TP, offset: int) -> bool:
        """Whether a generation still running is the record at `offset`, fetched again from
        the committed offset after the rebalance (not to be started twice). Parked ones
        count too: aiokafka sets the assignment, and may fetch, before its callback."""
        where = (tp, offset)
        return where in self._kept.values() or where in self._parked.values()

    def finished(self, task: asyncio.Task[None]) -> None:
        """A generation ended (answered, failed or aborted): nothing holds its record now."""
        self._parked.pop(task, None)
        self._kept.pop(task, None)
