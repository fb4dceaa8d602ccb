"""The estimated tokens of every work record not yet done, per partition: how the backlog
is weighed in work rather than in records."""

from __future__ import annotations

from array import array
from bisect import bisect_left


class Ledger:
    """One partition's records, by offset, with running totals of their estimated tokens.
    Records below the consumer group's committed offset are forgotten; a record the ledger
    never saw (read before it started) counts as the mean of those it has seen.

    Kept in flat arrays, 16 bytes a record (a backlog of ten million records: 160 MB, where
    two deques of Python numbers took 72 bytes a record); forgotten records leave from the
    front by moving `_head`, and the arrays are compacted once most of them are forgotten."""

    def __init__(self, default_tokens: float) -> None:
        self._offsets = array("q")
        self._totals = array("d")
        """Tokens of every record up to and including the one at the same index."""
        self._head = 0
        """The index of the first record not forgotten."""
        self._base = 0.0
        """Tokens of the records already forgotten (so totals keep growing)."""
        self._default = default_tokens
        self._seen = 0
        self._seen_tokens = 0.0
        self._next = 0
        """The offset after the last record added: a record below it was read already, even
        where it is forgotten since."""

    def add(self, offset: int, tokens: float) -> bool:
        """A record, in offset order; False, and ignored, for a repeat or an older offset
        (the reader starts over from a topic's oldest record when partitions are added)."""
        if offset < self._next:
            return False
        self._next = offset + 1
        last = self._totals[-1] if len(self._totals) > self._head else self._base
        self._offsets.append(offset)
        self._totals.append(last + tokens)
        self._seen += 1
        self._seen_tokens += tokens
        return True

    def between(self, start: int, end: int) -> float:
        """Estimated tokens of the records at offsets start..end-1."""
        if end <= start:
            return 0.0
        known = self._total_before(end) - self._total_before(start)
        counted = self._count_before(end) - self._count_before(start)
        return known + (end - start - counted) * self.mean()

    def forget_before(self, offset: int) -> None:
        """Records below `offset` are done (committed)."""
        head = self._count_before(offset)
        if head == self._head:
            return
        self._base = self._totals[head - 1]
        self._head = head
        if head > len(self._offsets) // 2:
            del self._offsets[:head]
            del self._totals[:head]
            self._head = 0

    def mean(self) -> float:
        """Mean estimated tokens of a record seen, or the default before any."""
        return self._seen_tokens / self._seen if self._seen else self._default

    def _total_before(self, offset: int) -> float:
        i = self._count_before(offset)
        return self._totals[i - 1] if i > self._head else self._base

    def _count_before(self, offset: int) -> int:
        """The index of the first record at or past `offset`, not before `_head`."""
        return bisect_left(self._offsets, offset, lo=self._head)
