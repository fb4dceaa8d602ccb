"""The backlog ledger against a plain model of it (every record kept in a dict), over random
adds, forgets and sums; and what a record costs it in memory, which grows with the backlog."""

from __future__ import annotations

import random
import tracemalloc

from autoscaler.ledger import Ledger


def _expected(records: dict[int, float], start: int, end: int, mean: float) -> float:
    """What the records start..end-1 weigh: those known, the rest at the mean."""
    return sum(records.get(offset, mean) for offset in range(start, end))


def test_the_ledger_sums_as_a_plain_model_does() -> None:
    rng = random.Random(7)
    ledger, records = Ledger(default_tokens=50), {}
    offset, done, seen = 0, 0, []
    for _ in range(3_000):
        roll = rng.random()
        if roll < 0.6:
            offset += rng.choice([1, 1, 1, 2, 5])  # gaps: records the ledger never saw
            tokens = float(rng.randint(1, 500))
            assert ledger.add(offset, tokens)
            records[offset] = tokens
            seen.append(tokens)
        elif roll < 0.7:
            done = rng.randint(done, offset + 1)
            ledger.forget_before(done)
            records = {o: t for o, t in records.items() if o >= done}
        else:
            start = rng.randint(done, offset + 1)
            end = rng.randint(start, offset + 3)
            mean = sum(seen) / len(seen) if seen else 50.0
            assert abs(ledger.between(start, end) - _expected(records, start, end, mean)) < 1e-6
    assert not ledger.add(offset, 1.0), "a repeat is ignored"


def test_a_record_costs_the_ledger_few_bytes() -> None:
    """A backlog of millions of records is held in memory: two deques of Python numbers took
    72 bytes a record (700 MB for ten million)."""
    ledger = Ledger(default_tokens=50)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for offset in range(200_000):
            ledger.add(offset, 100.0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / 200_000 < 24
    ledger.forget_before(150_000)
    assert len(ledger._offsets) == 50_000, "the records forgotten leave memory"
    assert ledger.between(150_000, 200_000) == 50_000 * 100.0
