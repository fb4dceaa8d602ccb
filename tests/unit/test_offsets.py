"""OffsetTracker: commit a partition only up to its first unfinished record, with its read
position and the records running as the commit's metadata."""

from __future__ import annotations

from schemas.work import progress
from workers.offsets import OffsetTracker

P0 = "work.standard/0"
P1 = "work.standard/1"


def _tracker(*offsets: int, tp: str = P0) -> OffsetTracker[str]:
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in offsets:
        tracker.started(tp, offset)
    return tracker


def _offsets(tracker: OffsetTracker[str]) -> dict[str, int]:
    """The offsets offered with nothing running: their progress follows the offset."""
    return {tp: offset for tp, (offset, _) in tracker.committable(()).items()}


def _committed(tracker: OffsetTracker[str], offsets: dict[str, int]) -> None:
    """A commit of `offsets` made with nothing running."""
    tracker.committed({tp: (o, progress(o, 0)) for tp, o in offsets.items()})


def test_nothing_started_nothing_to_commit() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    assert _offsets(tracker) == {}
    assert tracker.in_flight() == 0


def test_commit_stops_at_the_first_unfinished_offset() -> None:
    tracker = _tracker(0, 1, 2, 3)
    tracker.done(P0, 1)
    tracker.done(P0, 2)
    assert _offsets(tracker) == {P0: 0}
    tracker.done(P0, 0)
    assert _offsets(tracker) == {P0: 3}
    tracker.done(P0, 3)
    assert _offsets(tracker) == {P0: 4}


def test_commit_advances_as_gaps_fill_out_of_order() -> None:
    tracker = _tracker(10, 11, 12, 13, 14)
    expected = {13: 10, 11: 10, 10: 12, 14: 12, 12: 15}
    for offset, commit_point in expected.items():
        tracker.done(P0, offset)
        assert _offsets(tracker) == {P0: commit_point}, offset


def test_first_offset_need_not_be_zero() -> None:
    tracker = _tracker(500)
    assert _offsets(tracker) == {P0: 500}
    tracker.done(P0, 500)
    assert _offsets(tracker) == {P0: 501}


def test_committed_offset_is_not_offered_again() -> None:
    tracker = _tracker(0, 1)
    tracker.done(P0, 0)
    assert _offsets(tracker) == {P0: 1}
    _committed(tracker, {P0: 1})
    assert _offsets(tracker) == {}
    tracker.done(P0, 1)
    assert _offsets(tracker) == {P0: 2}
    _committed(tracker, {P0: 2})
    assert _offsets(tracker) == {}


def test_a_late_smaller_commit_does_not_move_back() -> None:
    tracker = _tracker(0, 1, 2)
    for offset in (0, 1, 2):
        tracker.done(P0, offset)
    _committed(tracker, {P0: 3})
    _committed(tracker, {P0: 1})
    assert _offsets(tracker) == {}
    tracker.started(P0, 3)
    tracker.done(P0, 3)
    assert _offsets(tracker) == {P0: 4}


def test_new_records_after_a_commit_hold_the_commit_point() -> None:
    tracker = _tracker(0)
    tracker.done(P0, 0)
    _committed(tracker, {P0: 1})
    tracker.started(P0, 1)
    assert _offsets(tracker) == {}
    tracker.done(P0, 1)
    assert _offsets(tracker) == {P0: 2}


def test_partitions_are_tracked_independently() -> None:
    tracker = _tracker(0, 1)
    tracker.started(P1, 7)
    tracker.started(P1, 8)
    tracker.done(P1, 8)
    tracker.done(P0, 0)
    tracker.done(P0, 1)
    assert _offsets(tracker) == {P0: 2, P1: 7}
    _committed(tracker, {P0: 2})
    assert _offsets(tracker) == {P1: 7}
    tracker.done(P1, 7)
    assert _offsets(tracker) == {P1: 9}


def test_forget_drops_a_partition_and_its_pending_records() -> None:
    tracker = _tracker(0, 1)
    tracker.started(P1, 5)
    tracker.forget([P0])
    assert tracker.in_flight() == 1
    assert _offsets(tracker) == {P1: 5}
    tracker.done(P0, 0)  # a record of a revoked partition finishing late is ignored
    _committed(tracker, {P0: 2})
    assert P0 not in _offsets(tracker)
    tracker.forget([P0, "never-seen"])
    assert _offsets(tracker) == {P1: 5}


def test_a_partition_assigned_again_starts_afresh() -> None:
    tracker = _tracker(0, 1, 2)
    tracker.done(P0, 0)
    _committed(tracker, {P0: 1})
    tracker.forget([P0])
    tracker.started(P0, 1)  # redelivered from the committed offset
    assert _offsets(tracker) == {P0: 1}
    tracker.done(P0, 1)
    assert _offsets(tracker) == {P0: 2}


def test_done_for_an_unknown_partition_is_ignored() -> None:
    tracker = _tracker(0)
    tracker.done(P1, 0)
    assert tracker.in_flight() == 1
    assert _offsets(tracker) == {P0: 0}


def test_in_flight_counts_started_and_not_done() -> None:
    tracker = _tracker(0, 1, 2)
    tracker.started(P1, 0)
    assert tracker.in_flight() == 4
    tracker.done(P0, 1)
    tracker.done(P1, 0)
    assert tracker.in_flight() == 2
    tracker.done(P0, 1)  # done twice counts once
    assert tracker.in_flight() == 2


def test_records_buffered_behind_a_full_engine_are_not_read() -> None:
    """Taken from Kafka but not begun, they still wait: the read position stops at the
    first of them."""
    tracker = _tracker(0, 1, 2, 3, 4)
    tracker.done(P0, 1)
    assert tracker.committable([(P0, 0), (P0, 2)]) == {P0: (0, progress(3, 2))}


def test_a_changed_progress_is_committed_at_the_same_offset_once() -> None:
    tracker = _tracker(0, 1, 2)
    first = tracker.committable([(P0, 0), (P0, 1)])
    assert first == {P0: (0, progress(2, 2))}
    tracker.committed(first)
    assert tracker.committable([(P0, 0), (P0, 1)]) == {}
    tracker.done(P0, 1)
    changed = tracker.committable([(P0, 0), (P0, 2)])
    assert changed == {P0: (0, progress(3, 2))}
    tracker.committed(changed)
    assert tracker.committable([(P0, 0), (P0, 2)]) == {}


def test_records_done_behind_a_long_generation_are_read_not_running() -> None:
    """The offset stops at 0, which runs on; 1 to 100 are done: read up to 101, one running."""
    tracker = _tracker(*range(101))
    tracker.started(P1, 0)
    for offset in range(1, 101):
        tracker.done(P0, offset)
    running = [(P0, 0), (P1, 0), ("revoked", 7)]
    assert tracker.committable(running) == {
        P0: (0, progress(101, 1)),
        P1: (0, progress(1, 1)),
    }
