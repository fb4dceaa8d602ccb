"""Which offsets a worker may commit while many records of a partition are in flight, and
the progress it writes beside them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from schemas.work import progress

TP = TypeVar("TP")


@dataclass
class _Partition:
    pending: set[int] = field(default_factory=set)
    next_offset: int = 0
    committed: int = -1
    progress: str | None = None
    """The metadata of the last commit."""


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

    def committable(self, running: Iterable[tuple[TP, int]]) -> dict[TP, tuple[int, str]]:
        """The offset to commit (the next one to read) and the partition's progress
        (schemas/work.py), for each partition whose offset advanced or whose progress
        changed since its last commit. `running`: the records whose generation began (by
        partition and offset); the others taken wait in the worker's buffers, and the read
        position stops at the first of them."""
        begun: dict[TP, set[int]] = defaultdict(set)
        for tp, offset in running:
            begun[tp].add(offset)
        out = {}
        for tp, part in self._parts.items():
            offset = min(part.pending) if part.pending else part.next_offset
            runs = part.pending & begun.get(tp, set())
            read = min(part.pending - runs, default=part.next_offset)
            made = progress(read, len(runs))
            if offset > part.committed or (offset == part.committed and made != part.progress):
                out[tp] = (offset, made)
        return out

    def committed(self, offsets: Mapping[TP, tuple[int, str]]) -> None:
        """Record a successful commit of offsets and their metadata."""
        for tp, (offset, made) in offsets.items():
            part = self._parts.get(tp)
            if part is not None and offset >= part.committed:
                part.committed, part.progress = offset, made

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions taken away by a rebalance: their records will be redelivered elsewhere."""
        for tp in tps:
            self._parts.pop(tp, None)

    def in_flight(self) -> int:
        """Records started and not yet done."""
        return sum(len(p.pending) for p in self._parts.values())
