"""faust's commit never skips a record an agent still processes (streams/offsets.py)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP

from streams.offsets import guarded, install

PART = TP("llmq.requests", 1)


@dataclass(eq=False)
class Record:
    tp: TP
    offset: int
    acked: bool = False


@dataclass
class Books:
    """The bookkeeping faust's Consumer._new_offset reads, nothing else."""

    committed: int | None
    acked: list[int]
    in_flight: list[int] = field(default_factory=list)
    _acked: dict[TP, list[int]] = field(init=False)
    _acked_index: dict[TP, set[int]] = field(init=False)
    _committed_offset: dict[TP, int | None] = field(init=False)
    _gap: dict[TP, list[Any]] = field(init=False)
    _unacked_messages: set[Record] = field(init=False)

    def __post_init__(self) -> None:
        self._acked = defaultdict(list, {PART: list(self.acked)})
        self._acked_index = defaultdict(set, {PART: set(self.acked)})
        self._committed_offset = defaultdict(lambda: None, {PART: self.committed})
        self._gap = defaultdict(list)  # no gaps (faust keeps an IntervalTree)
        self._unacked_messages = {Record(PART, o) for o in self.in_flight}


def _new_offset(books: Any, *, guard: bool) -> int | None:
    method = Consumer._new_offset
    original = getattr(method, "__wrapped__", method)
    return (guarded(original) if guard else original)(books, PART)


def test_faust_alone_commits_past_the_record_in_flight_at_the_head() -> None:
    """faust-streaming/faust#606: 39 in flight, 40 and 41 acked: faust commits 42."""
    assert _new_offset(Books(39, [40, 41], [39]), guard=False) == 42


@pytest.mark.parametrize(
    ("books", "expected"),
    [
        (Books(39, [40, 41], [39]), None),  # the head is in flight: nothing
        (Books(39, [39, 41], [40]), 40),  # up to the record in flight
        (Books(39, [39, 40, 41]), 42),  # nothing in flight: all of it
        (Books(None, [1, 2], [0]), None),  # no commit yet, the first record in flight
        (Books(39, [40, 41], [12]), 42),  # in flight before the committed offset: no matter
    ],
)
def test_the_guard_commits_only_what_nothing_in_flight_precedes(
    books: Books, expected: int | None
) -> None:
    assert _new_offset(books, guard=True) == expected


def test_install_guards_faust_once() -> None:
    install()
    first = Consumer._new_offset
    install()
    assert Consumer._new_offset is first and getattr(first, "guarded", False)
