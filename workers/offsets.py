"""Which offsets a worker may commit while many records of a partition are in flight."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

TP = TypeVar("TP")


@dataclass
class _Partition:
    pending: set[int] = field(default_factory=set)
    next_offset: int = 0
    committed: int = -1


class OffsetTracker(Generic[TP]):
    """Commit a partition only up to its oldest record whose outputs are not yet acknowledged.

    Records finish out of order under continuous batching; committing past an unfinished
    one would lose it if the worker died, so the commit point stops at the first gap.
    """

    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}

    def started(self, tp: TP, offset: int) -> None:
        """A record was taken from the partition (in offset order)."""
        part = self._parts.setdefault(tp, _Partition(next_offset=offset))
        part.pending.add(offset)
        part.next_offset = max(part.next_offset, offset + 1)

    def done(self, tp: TP, offset: int) -> None:
        """Everything the record produced is acknowledged; unknown partitions are ignored."""
        part = self._parts.get(tp)
        if part is not None:
            part.pending.discard(offset)

    def committable(self) -> dict[TP, int]:
        """The offset to commit (the next one to read) for each partition that advanced."""
        out = {}
        for tp, part in self._parts.items():
            offset = min(part.pending) if part.pending else part.next_offset
            if offset > part.committed:
                out[tp] = offset
        return out

    def committed(self, offsets: dict[TP, int]) -> None:
        """Record a successful commit."""
        for tp, offset in offsets.items():
            if tp in self._parts:
                self._parts[tp].committed = max(self._parts[tp].committed, offset)

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions taken away by a rebalance: their records will be redelivered elsewhere."""
        for tp in tps:
            self._parts.pop(tp, None)

    def in_flight(self) -> int:
        """Records started and not yet done."""
        return sum(len(p.pending) for p in self._parts.values())
