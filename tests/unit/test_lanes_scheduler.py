"""LaneScheduler: lane order, headroom caps, minimum shares, bounded buffers, revocation."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from schemas.lanes import Lane
from schemas.names import work_topic
from tests.unit.clock import Clock
from workers.lanes import LanePolicy, LaneScheduler, lane_of
from workers.settings import WorkerSettings

STRICT = LanePolicy(min_share=0.0, standard_cap=1.0, batch_cap=1.0, yield_cap=1.0)
INT, STD, BAT = Lane.INTERACTIVE, Lane.STANDARD, Lane.BATCH


def _scheduler(
    policy: LanePolicy = STRICT, max_inflight: int = 8, clock: Clock | None = None
) -> LaneScheduler[str, int]:
    return LaneScheduler(policy, max_inflight, clock or Clock())


def _fill(scheduler: LaneScheduler[str, int], lane: Lane, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        scheduler.push(lane, f"{lane.value}-p0", i)


def _lanes_started(scheduler: LaneScheduler[str, int], *, finish: bool = False) -> list[Lane]:
    """Pop until the scheduler says wait; with `finish`, each generation ends at once."""
    lanes = []
    while (picked := scheduler.pop()) is not None:
        lanes.append(picked[0])
        if finish:
            scheduler.finished(picked[0])
    return lanes


def test_higher_lanes_start_first_and_each_lane_is_fifo() -> None:
    scheduler = _scheduler()
    _fill(scheduler, BAT, 2)
    _fill(scheduler, STD, 2, start=10)
    _fill(scheduler, INT, 2, start=20)
    order = []
    while (picked := scheduler.pop()) is not None:
        order.append((picked[0], picked[2]))
    assert order == [(INT, 20), (INT, 21), (STD, 10), (STD, 11), (BAT, 0), (BAT, 1)]
    assert [scheduler.running(lane) for lane in Lane] == [2, 2, 2]


def test_nothing_starts_on_a_full_engine_or_from_empty_buffers() -> None:
    scheduler = _scheduler(max_inflight=4)
    assert scheduler.pop() is None
    _fill(scheduler, INT, 5)
    assert _lanes_started(scheduler) == [INT] * 4
    scheduler.finished(INT)
    assert _lanes_started(scheduler) == [INT]


def test_lower_lanes_leave_headroom_for_interactive() -> None:
    policy = LanePolicy(min_share=0.0, standard_cap=0.75, batch_cap=0.5, yield_cap=1.0)
    scheduler = _scheduler(policy, max_inflight=8)
    _seen(scheduler, INT)
    _fill(scheduler, BAT, 10)
    assert _lanes_started(scheduler) == [BAT] * 4
    _fill(scheduler, STD, 10, start=100)
    assert _lanes_started(scheduler) == [STD] * 2
    _fill(scheduler, INT, 10, start=200)
    assert _lanes_started(scheduler) == [INT] * 2


def _seen(scheduler: LaneScheduler[str, int], lane: Lane) -> None:
    """One record of `lane` fetched, started (before any lower lane's) and finished."""
    _fill(scheduler, lane, 1, start=-1)
    picked = scheduler.pop()
    assert picked is not None and picked[0] == lane
    scheduler.finished(lane)


def test_batch_alone_stops_at_its_cap_while_higher_lanes_had_work_lately() -> None:
    clock = Clock()
    scheduler = _scheduler(LanePolicy(min_share=0.0, hold_s=60), max_inflight=64, clock=clock)
    _seen(scheduler, STD)
    clock.now += 59
    _fill(scheduler, BAT, 60)
    assert len(_lanes_started(scheduler)) == 48


def test_headroom_is_work_conserving() -> None:
    """No higher-lane work for hold_s (or ever): a lower lane fills the engine; a
    higher-lane record brings the cap back."""
    clock = Clock()
    policy = LanePolicy(min_share=0.0, standard_cap=0.5, batch_cap=0.5, yield_cap=1.0)
    scheduler = _scheduler(policy, max_inflight=8, clock=clock)
    _fill(scheduler, BAT, 20)
    assert _lanes_started(scheduler) == [BAT] * 8, "nothing higher was ever seen"
    for _ in range(8):
        scheduler.finished(BAT)
    _seen(scheduler, INT)
    assert _lanes_started(scheduler) == [BAT] * 4, "interactive just ran: the cap holds"
    clock.now += policy.hold_s
    assert _lanes_started(scheduler) == [BAT] * 4, "hold_s without it: all 8 slots"
    for _ in range(8):
        scheduler.finished(BAT)
    _fill(scheduler, STD, 1, start=100)
    assert _lanes_started(scheduler) == [STD] + [BAT] * 3, "standard waiting: batch capped"


def test_lower_lanes_yield_while_a_higher_lane_runs() -> None:
    policy = LanePolicy(
        min_share=0.0, standard_cap=1.0, batch_cap=1.0, yield_cap=0.25, yield_hold_s=0.0
    )
    scheduler = _scheduler(policy, max_inflight=8)
    _fill(scheduler, BAT, 20)
    assert len(_lanes_started(scheduler)) == 8
    for _ in range(4):
        scheduler.finished(BAT)
    _fill(scheduler, INT, 1, start=100)
    assert _lanes_started(scheduler) == [INT], "4 batch still run: none starts beside it"
    for _ in range(3):
        scheduler.finished(BAT)
    assert _lanes_started(scheduler) == [BAT], "below the yielding cap of 2 again"
    scheduler.finished(INT)
    assert _lanes_started(scheduler) == [BAT] * 6, "nothing higher runs: up to the batch cap"


def test_lower_lanes_keep_yielding_for_the_yield_hold_after_the_higher_lane_ends() -> None:
    policy = LanePolicy(min_share=0.0, standard_cap=1.0, batch_cap=1.0, yield_cap=0.25)
    clock = Clock()
    scheduler = _scheduler(policy, max_inflight=8, clock=clock)
    _fill(scheduler, INT, 1, start=100)
    _fill(scheduler, BAT, 20)
    assert _lanes_started(scheduler) == [INT, BAT, BAT], "batch yields to 2 beside it"
    scheduler.finished(INT)
    clock.now += 4.0
    assert _lanes_started(scheduler) == [], "between two interactive requests: still 2"
    clock.now += 1.5
    assert _lanes_started(scheduler) == [BAT] * 6, "the hold is over: up to max_inflight"


def test_caps_are_fractions_of_max_inflight_and_never_below_one() -> None:
    policy = LanePolicy()
    assert [policy.cap(lane, 64) for lane in Lane] == [64, 57, 48]
    assert policy.yielding_cap(64) == 6
    assert LanePolicy(batch_cap=0.1).cap(BAT, 4) == 1
    assert LanePolicy(yield_cap=0.1).yielding_cap(4) == 1


def _starts(scheduler: LaneScheduler[str, int], n: int) -> Counter[Lane]:
    """Start `n` records, each ending before the next start, topping every lane up."""
    counts: Counter[Lane] = Counter()
    for i in range(n):
        for lane in Lane:
            if scheduler.buffered(lane) < 2:
                _fill(scheduler, lane, 2, start=1000 * i)
        picked = scheduler.pop()
        assert picked is not None
        counts[picked[0]] += 1
        scheduler.finished(picked[0])
    return counts


def test_each_lower_lane_with_work_gets_its_minimum_share() -> None:
    scheduler = _scheduler(LanePolicy(min_share=0.1))
    counts = _starts(scheduler, 1000)
    assert counts[STD] == pytest.approx(100, abs=2)
    assert counts[BAT] == pytest.approx(100, abs=2)
    assert counts[INT] == pytest.approx(800, abs=4)


def test_the_minimum_share_overrides_the_caps_but_not_max_inflight() -> None:
    policy = LanePolicy(min_share=0.2, standard_cap=0.5, batch_cap=0.5, yield_cap=0.1)
    scheduler = _scheduler(policy, max_inflight=8)
    _fill(scheduler, INT, 7, start=-7)
    assert _lanes_started(scheduler) == [INT] * 7  # held: above both lower caps from now on
    counts = _starts(scheduler, 100)
    assert counts[BAT] == pytest.approx(20, abs=1)
    assert counts[STD] == pytest.approx(20, abs=1)
    _fill(scheduler, INT, 1)
    assert scheduler.pop() is not None
    assert scheduler.pop() is None, "8 of 8: not even an owed start"


def test_a_zero_share_is_strict_priority() -> None:
    counts = _starts(_scheduler(), 200)
    assert counts == Counter({INT: 200})


def test_a_lane_that_was_idle_is_owed_nothing() -> None:
    """Credit accrues only while a lane has work, so a lane that returns gets no burst."""
    scheduler = _scheduler(LanePolicy(min_share=0.25, yield_cap=1.0))
    _fill(scheduler, INT, 20)
    for _ in range(10):
        picked = scheduler.pop()
        assert picked is not None
        scheduler.finished(picked[0])
    _fill(scheduler, BAT, 5)
    lanes = []
    for _ in range(9):
        picked = scheduler.pop()
        assert picked is not None
        scheduler.finished(picked[0])
        lanes.append(picked[0])
    assert lanes == [INT, INT, INT, INT, BAT, INT, INT, INT, BAT]


def test_a_full_buffer_closes_its_lane_until_drained_to_half() -> None:
    scheduler = _scheduler(LanePolicy(min_share=0.0, buffer=4))
    assert scheduler.fetchable() == set(Lane)
    assert scheduler.room() == 4
    _fill(scheduler, Lane.BATCH, 3)
    assert scheduler.room() == 1
    _fill(scheduler, Lane.BATCH, 1, start=3)
    assert scheduler.fetchable() == {Lane.INTERACTIVE, Lane.STANDARD}
    assert scheduler.room() == 4
    scheduler.pop()
    assert Lane.BATCH not in scheduler.fetchable()  # 3 left: above half
    scheduler.pop()
    assert Lane.BATCH in scheduler.fetchable()
    assert scheduler.room() == 2


def test_all_lanes_full_leaves_no_room() -> None:
    scheduler = _scheduler(LanePolicy(buffer=1))
    for lane in Lane:
        _fill(scheduler, lane, 1)
    assert scheduler.fetchable() == set()
    assert scheduler.room() == 0


def test_revoked_partitions_lose_their_buffered_records() -> None:
    scheduler = _scheduler(LanePolicy(min_share=0.0, yield_cap=1.0, buffer=4))
    for i in range(4):
        scheduler.push(Lane.BATCH, "p0" if i % 2 else "p1", i)
    scheduler.push(Lane.INTERACTIVE, "p1", 9)
    assert scheduler.fetchable() == {Lane.INTERACTIVE, Lane.STANDARD}
    assert scheduler.drop({"p1"}) == 3
    assert scheduler.buffered(Lane.BATCH) == 2
    assert scheduler.buffered(Lane.INTERACTIVE) == 0
    assert Lane.BATCH in scheduler.fetchable()
    assert [scheduler.pop(), scheduler.pop(), scheduler.pop()] == [
        (BAT, "p0", 1),
        (BAT, "p0", 3),
        None,
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_share": 0.35}, "min_share"),
        ({"min_share": -0.1}, "min_share"),
        ({"batch_cap": 0.95}, "batch_cap"),
        ({"batch_cap": 0.0}, "batch_cap"),
        ({"standard_cap": 1.5}, "standard_cap"),
        ({"yield_cap": 0.0}, "yield_cap"),
        ({"yield_cap": 1.5}, "yield_cap"),
        ({"yield_hold_s": -1.0}, "yield_hold_s"),
        ({"buffer": 0}, "buffer"),
    ],
)
def test_policy_is_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LanePolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["smollm2-135m", "qwen2.5-0.5b", "a.b.c"])
@pytest.mark.parametrize("lane", list(Lane))
def test_lane_of_a_work_topic(model: str, lane: Lane) -> None:
    assert lane_of(work_topic(model, lane)) is lane


def test_a_topic_that_is_not_a_lane_is_an_error() -> None:
    with pytest.raises(ValueError, match="urgent"):
        lane_of("llmq.work.m.urgent")


def test_the_worker_settings_make_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings().lane_policy() == LanePolicy()
    monkeypatch.setenv("LLMQ_LANE_MIN_SHARE", "0.2")
    monkeypatch.setenv("LLMQ_LANE_STANDARD_CAP", "0.8")
    monkeypatch.setenv("LLMQ_LANE_BATCH_CAP", "0.5")
    monkeypatch.setenv("LLMQ_LANE_YIELD_CAP", "0.3")
    monkeypatch.setenv("LLMQ_LANE_YIELD_HOLD_S", "2.5")
    monkeypatch.setenv("LLMQ_LANE_BUFFER", "8")
    assert WorkerSettings().lane_policy() == LanePolicy(
        min_share=0.2, standard_cap=0.8, batch_cap=0.5, yield_cap=0.3, yield_hold_s=2.5, buffer=8
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLMQ_LANE_MIN_SHARE", "0.5"),
        ("LLMQ_LANE_BATCH_CAP", "0.95"),
        ("LLMQ_LANE_STANDARD_CAP", "0"),
        ("LLMQ_LANE_YIELD_CAP", "1.1"),
        ("LLMQ_LANE_YIELD_HOLD_S", "-1"),
        ("LLMQ_LANE_BUFFER", "0"),
    ],
)
def test_bad_lane_settings_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=f"(?i){name.removeprefix('LLMQ_')}"):
        WorkerSettings()
