"""The estimated tokens of every work record not yet done, per partition: how the backlog
is weighed in work rather than in records."""

from __future__ import annotations

from bisect import bisect_left
from collections import deque


class Ledger:
    """One partition's records, by offset, with running totals of their estimated tokens.
    Records below the consumer group's committed offset are forgotten; a record the ledger
    never saw (read before it started) counts as the mean of those it has seen."""

    def __init__(self, default_tokens: float) -> None:
        self._offsets: deque[int] = deque()
        self._totals: deque[float] = deque()
        """Tokens of every record up to and including the one at the same index."""
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
        last = self._totals[-1] if self._totals else self._base
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
        while self._offsets and self._offsets[0] < offset:
            self._offsets.popleft()
            self._base = self._totals.popleft()

    def mean(self) -> float:
        """Mean estimated tokens of a record seen, or the default before any."""
        return self._seen_tokens / self._seen if self._seen else self._default

    def _total_before(self, offset: int) -> float:
        i = bisect_left(self._offsets, offset)
        return self._totals[i - 1] if i else self._base

    def _count_before(self, offset: int) -> int:
        return bisect_left(self._offsets, offset)
