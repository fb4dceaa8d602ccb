"""faust never skips a record: not in its commits, not when it restarts (streams/offsets.py)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import pytest
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree  # type: ignore[import-untyped]

from streams.offsets import Tails, guarded, install, seek_first

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
    _gap: dict[TP, IntervalTree] = field(init=False)
    _unacked_messages: set[Record] = field(init=False)
    seeks: list[tuple[TP, int]] = field(default_factory=list)

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    def __post_init__(self) -> None:
        self._acked = defaultdict(list, {PART: list(self.acked)})
        self._acked_index = defaultdict(set, {PART: set(self.acked)})
        self._committed_offset = defaultdict(lambda: None, {PART: self.committed})
        self._gap = defaultdict(IntervalTree)
        self._unacked_messages = {Record(PART, o) for o in self.in_flight}


def _new_offset(books: Any, *, guard: bool) -> int | None:
    """What faust would commit (None: nothing), in an event loop as faust's commit is."""
    method = Consumer._new_offset
    original = getattr(method, "__wrapped__", method)

    async def commit() -> int | None:
        offset = (guarded(original) if guard else original)(books, PART)
        await asyncio.sleep(0)  # a seek it asked for runs
        return offset

    return asyncio.run(commit())


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
        (Books(39, [39, 40], [12]), 41),  # in flight before the committed offset: no matter
    ],
)
def test_the_guard_commits_only_what_nothing_in_flight_precedes(
    books: Books, expected: int | None
) -> None:
    assert _new_offset(books, guard=True) == expected
    assert books.seeks == []


def test_faust_alone_commits_over_records_it_never_handled() -> None:
    """39 and 40 were fetched and dropped unread: reading 41 next, faust notes a "gap" from
    39 to 41 that it counts as acked."""
    books = Books(39, [41, 42])
    books._gap[PART] = IntervalTree.from_tuples([(39, 42)])
    assert _new_offset(books, guard=False) == 42


def test_the_guard_reads_records_it_never_handled_again() -> None:
    books = Books(39, [41, 42])
    books._gap[PART] = IntervalTree.from_tuples([(39, 42)])
    assert _new_offset(books, guard=True) is None
    assert books.seeks == [(PART, 39)], "read again from the committed offset"


def test_a_hole_that_stays_is_warned_of_once(caplog: pytest.LogCaptureFixture) -> None:
    """While a broker is down the reread waits, and faust asks to commit every second."""
    books = Books(39, [41, 42])
    method = Consumer._new_offset
    new_offset = guarded(getattr(method, "__wrapped__", method))

    async def commits() -> list[int | None]:
        offsets = []
        for _ in range(3):
            offsets.append(new_offset(books, PART))
            await asyncio.sleep(0)
        return offsets

    with caplog.at_level(logging.DEBUG, logger="streams.offsets"):
        assert asyncio.run(commits()) == [None, None, None]
    levels = [r.levelno for r in caplog.records if r.name == "streams.offsets"]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert books.seeks == [(PART, 39)] * 3, "each commit still asks to read it again"


@dataclass
class Reader(Books):
    """Books, and where the consumer reads its one partition."""

    at: int = 0
    """The consumer's position: the next offset it fetches."""
    changelog: bool = False
    flow_active: bool = True
    _commit_fut: object | None = None

    def assignment(self) -> set[TP]:
        return {PART}

    def _is_changelog_tp(self, tp: TP) -> bool:
        return self.changelog

    def positions(self, consumer: Any) -> dict[TP, int]:
        return {PART: self.at}


def _checks(reader: Reader, times: int = 2) -> list[tuple[TP, int]]:
    """The seeks `times` checks in a row ask for."""
    tails = Tails(reader.positions)

    async def run() -> None:
        for _ in range(times):
            await tails.check(reader)

    asyncio.run(run())
    return reader.seeks


def test_records_read_past_at_a_partitions_end_are_read_again() -> None:
    """Offsets 5 to 7 were fetched and dropped on a restart, and nothing came after them:
    no acked record follows the hole, so the commit never sees it."""
    assert _checks(Reader(5, [], at=8), times=1) == [], "a record may be on its way"
    assert _checks(Reader(5, [], at=8)) == [(PART, 5)]


def test_a_partition_at_its_logs_start_is_read_again_from_there() -> None:
    assert _checks(Reader(0, [], at=3)) == [(PART, 0)]


@pytest.mark.parametrize(
    "reader",
    [
        Reader(5, [], at=5),  # nothing read past the committed offset
        Reader(5, [], [5], at=8),  # 5 is in flight
        Reader(5, [5, 6], at=8),  # acked, to be committed
        Reader(5, [], at=8, changelog=True),  # a table's changelog: faust's recovery reads it
        Reader(5, [], at=8, flow_active=False),  # a rebalance
        Reader(5, [], at=8, _commit_fut=object()),  # a commit moves the books
        Reader(None, [], at=3),  # not yet sought to its committed offset or log start
    ],
)
def test_a_partition_being_handled_is_left_alone(reader: Reader) -> None:
    assert _checks(reader, times=3) == []


def test_a_partition_queued_behind_busy_actors_is_left_alone() -> None:
    """The agent's actors are all busy on another partition of the topic: this one's
    records wait in their shared queue, untracked until an actor takes them. A record in
    flight on another topic holds nothing off."""
    queued = Reader(5, [], at=8)
    queued._unacked_messages.add(Record(TP("llmq.requests", 0), 500))
    assert _checks(queued, times=3) == []
    elsewhere = Reader(5, [], at=8)
    elsewhere._unacked_messages.add(Record(TP("llmq.metering", 0), 500))
    assert _checks(elsewhere) == [(PART, 5)]


def test_a_reader_that_moves_between_checks_is_left_alone() -> None:
    reader = Reader(5, [], at=6)
    tails = Tails(reader.positions)

    async def run() -> None:
        await tails.check(reader)
        reader.at = 7  # a record was fetched and is on its way to its agent
        await tails.check(reader)

    asyncio.run(run())
    assert reader.seeks == []


def test_a_commit_in_flight_only_puts_the_check_off() -> None:
    reader = Reader(5, [], at=8)
    tails = Tails(reader.positions)

    async def run() -> None:
        await tails.check(reader)
        reader._commit_fut = object()
        await tails.check(reader)
        reader._commit_fut = None
        await tails.check(reader)

    asyncio.run(run())
    assert reader.seeks == [(PART, 5)]


class Calls(list[str]):
    """The consumer calls faust's end of recovery makes, in order."""

    committed: int | None = 39

    def consumer(self) -> Any:
        consumer = MagicMock()
        consumer.assignment.return_value = {PART}
        consumer.resume_partitions.side_effect = lambda tps: self.append(f"resume {sorted(tps)}")
        consumer._committed_offset = defaultdict(lambda: None, {PART: self.committed})

        async def earliest_offsets(*tps: TP) -> dict[TP, int]:
            return dict.fromkeys(tps, 3)

        async def seek(tp: TP, offset: int) -> None:
            self.append(f"seek {offset}")

        consumer.earliest_offsets = earliest_offsets
        consumer.seek = seek

        async def perform_seek() -> None:
            self.append("seek")

        consumer.perform_seek = perform_seek
        return consumer


def _end_recovery(calls: Calls, *, fixed: bool) -> Any:
    """faust's own Recovery.on_recovery_completed on a stand-in recovery, app and consumer."""
    recovery = MagicMock()
    recovery.app.consumer = calls.consumer()
    recovery.app.consumer_generation_id = 0
    recovery.app.on_rebalance_complete.send = AsyncMock()
    recovery.app._fetcher.maybe_start = AsyncMock()
    recovery.tables.values.return_value = []
    recovery._is_changelog_tp.return_value = False

    async def wait(coro: Any, **_: Any) -> None:
        await coro

    recovery._wait = wait
    method = Recovery.on_recovery_completed
    original = getattr(method, "__wrapped__", method)
    end = seek_first(original) if fixed else original

    async def run() -> None:
        await end(recovery, 0)

    asyncio.run(run())
    return recovery


def test_faust_alone_resumes_the_stream_partitions_before_it_seeks_them() -> None:
    calls = Calls()
    _end_recovery(calls, fixed=False)
    assert calls == [f"resume {[PART]}", "seek"]


def test_the_fix_seeks_the_stream_partitions_before_it_resumes_them() -> None:
    calls = Calls()
    _end_recovery(calls, fixed=True)
    assert calls == ["seek", f"resume {[PART]}"]


def test_a_partition_never_committed_starts_at_its_logs_start_as_if_committed() -> None:
    """faust keeps None as its committed offset, under which no hole is seen before the
    first acked record: with 3 dropped and 4 acked, it would commit 5."""
    calls = Calls()
    calls.committed = None
    recovery = _end_recovery(calls, fixed=True)
    assert calls == ["seek", "seek 3", f"resume {[PART]}"]
    assert recovery.app.consumer._committed_offset[PART] == 3


def test_installed_faust_notes_no_gap_that_would_fill_a_hole_unread() -> None:
    install()
    books = Books(39, [41])
    asyncio.run(Consumer._add_gap(books, PART, 39, 41))  # type: ignore[arg-type]
    assert not books._gap[PART]
    assert _new_offset(books, guard=True) is None
    assert books.seeks == [(PART, 39)]


def test_install_fixes_faust_once() -> None:
    install()
    first, completed = Consumer._new_offset, Recovery.on_recovery_completed
    install()
    assert Consumer._new_offset is first and getattr(first, "guarded", False)
    assert Recovery.on_recovery_completed is completed
    assert getattr(completed, "seeks_first", False)
