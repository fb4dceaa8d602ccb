"""What the autoscaler counts as waiting work: not the records done behind a long generation
whose commit it holds, nor those running, by the progress the workers write with their
commits (schemas/work.py progress, read by autoscaler/pools.py); a commit without it
reads as before."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from aiokafka import TopicPartition

from autoscaler.actuator import Exported
from autoscaler.policy import Observation, Policy
from autoscaler.pools import PoolView
from autoscaler.service import Autoscaler
from autoscaler.settings import AutoscalerSettings
from llmq.groups import Group
from schemas.lanes import Lane
from schemas.names import HEADER_TOKENS, work_topic
from tests.unit.test_autoscaler_pools import MODEL, Admin, Consumer, Record, _follow, _pools
from workers.offsets import OffsetTracker

pytestmark = pytest.mark.timeout(30)

TOKENS = 1150.0
"""Each record's estimated tokens."""
WORKER_TOKENS_PER_S = 4600.0
"""What one worker serves: the arrivals below are half of it."""
TP = TopicPartition(work_topic(MODEL, Lane.INTERACTIVE), 0)


def _held_behind_a_long_generation() -> tuple[int, str]:
    """A worker's commit, by the real tracker: records 0 to 100 taken, 0 still generating
    (120 s of it), 1 to 100 done. The offset stays at 0."""
    tracker: OffsetTracker[TopicPartition] = OffsetTracker()
    for offset in range(101):
        tracker.started(TP, offset)
    for offset in range(1, 101):
        tracker.done(TP, offset)
    return tracker.committable([(TP, 0)])[TP]


def _look(monkeypatch: pytest.MonkeyPatch, commit: tuple[int, str], group: Group) -> PoolView:
    """The pool with the commit `commit` (offset, metadata), records 0 to 102 in the log
    (101 and 102 came after the worker's last fetch)."""
    headers = [(HEADER_TOKENS, str(TOKENS).encode())]
    consumer = Consumer({TP: 103}, [{TP: [Record(offset, headers) for offset in range(103)]}])
    admin = Admin()
    admin.offsets, admin.metadata = {TP: commit[0]}, {TP: commit[1]}
    admin.group = group
    found = _pools(monkeypatch, consumer, admin)

    async def look() -> PoolView:
        await _follow(found, consumer)
        return await found.look(MODEL)

    return asyncio.run(look())


def test_records_done_behind_a_long_generation_are_not_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reviewer's case: one interactive partition's commit held at 0 by a generation of
    120 s while 100 later records are done; two records wait. Arrivals are half of what
    one worker serves: one worker, and the pool is not busy, so its rate is not measured
    down to its arrivals (the 103 records past the commit made it max, 4, and busy)."""
    view = _look(monkeypatch, _held_behind_a_long_generation(), Group(1, "Stable"))
    assert (view.backlog_records, view.in_flight) == (2, 1)
    assert view.backlog_tokens == {Lane.INTERACTIVE: 2 * TOKENS}

    settings = AutoscalerSettings(tokens_per_s=WORKER_TOKENS_PER_S)
    scaler = Autoscaler(settings, Exported())
    model = next(iter(scaler._models.values()))
    arriving = WORKER_TOKENS_PER_S / 2
    desired = []
    for tick in range(60):  # five minutes of ticks: 2 records a tick arrive, 2 commit
        now = 5.0 * tick
        seen = replace(
            view,
            served_tokens=5 * arriving,
            served_records=10,
            arrived_tokens=now * arriving,
        )
        desired.append(model.policy.decide(scaler._observe(model, seen, now)).desired)
    assert set(desired) == {1}
    assert model.service.per_replica(1) == WORKER_TOKENS_PER_S  # still the prior


@pytest.mark.parametrize("group", [Group(1, "Stable"), Group(0, "Empty")])
def test_a_commit_without_progress_leaves_everything_past_it_waiting(
    monkeypatch: pytest.MonkeyPatch, group: Group
) -> None:
    """A worker of an older release writes no progress; a group without members runs
    nothing, whatever its last worker wrote."""
    offset, progress = _held_behind_a_long_generation()
    view = _look(monkeypatch, (offset, progress if group.members == 0 else ""), group)
    assert (view.backlog_records, view.in_flight) == (103, 0)
    assert view.backlog_tokens == {Lane.INTERACTIVE: 103 * TOKENS}


@pytest.mark.parametrize(
    ("progress", "waiting", "running"),
    [
        ("llmq-progress/1 read=101 running=1", 2, 1),
        ("llmq-progress/1 read=101 running=500", 2, 101),  # never more than was taken
        ("llmq-progress/1 read=7 running=1", 96, 1),
        ("llmq-progress/1 read=900 running=1", 0, 1),  # never past the log's end
        ("llmq-progress/2 read=101 running=1", 103, 0),  # a version it does not know
        ("llmq-progress/1 read=-4 running=1", 103, 0),
        ("someone else's note", 103, 0),
    ],
)
def test_progress_is_read_within_what_the_log_and_the_commit_allow(
    monkeypatch: pytest.MonkeyPatch, progress: str, waiting: int, running: int
) -> None:
    view = _look(monkeypatch, (0, progress), Group(1, "Stable"))
    assert (view.backlog_records, view.in_flight) == (waiting, running)


def test_a_pool_whose_engines_are_full_with_more_waiting_is_measured_busy() -> None:
    """64 records run in a worker of max_inflight 64 and 10 wait: the commits measure what
    it serves, though the waiting alone are fewer than its engine holds."""
    scaler = Autoscaler(AutoscalerSettings(tokens_per_s=WORKER_TOKENS_PER_S), Exported())
    model = next(iter(scaler._models.values()))
    full = PoolView(
        {Lane.BATCH: 10 * TOKENS}, 10, 0.0, 0, 0.0, 1, 4, "Stable", model.spec.max_inflight
    )
    for tick in range(60):  # five minutes of it, 1,000 tok/s committed
        seen = replace(full, served_tokens=5000.0, served_records=20)
        scaler._observe(model, seen, 5.0 * tick)
    assert model.service.per_replica(1) == pytest.approx(1000.0)


def test_a_pool_running_generations_is_not_idle() -> None:
    """Nothing waits and nothing arrives, but generations run: a pool that may go to zero
    keeps its worker (it would abort them)."""
    targets = AutoscalerSettings(min_replicas=0, idle_s=0, stabilization_s=0).targets()
    policy = Policy(targets)
    seen = Observation(
        now=0.0,
        backlog_tokens={},
        backlog_records=0,
        arrival_tokens_per_s=0.0,
        tokens_per_s=WORKER_TOKENS_PER_S,
        running=1,
        partitions=4,
        in_flight_records=3,
    )
    desired = [policy.decide(replace(seen, now=t)).desired for t in (1.0, 2.0)]
    assert desired == [1, 1]
    assert "(0 records waiting, 3 running)" in policy.decide(replace(seen, now=3.0)).reason
    assert policy.decide(replace(seen, now=4.0, in_flight_records=0)).desired == 0


def test_a_pool_keeps_the_replicas_whose_engines_hold_what_runs() -> None:
    """Four workers run 32 generations of max_inflight 8, nothing waits: past the window the
    pool went to one, and the three leaving aborted their generations to run them again."""
    scaler = Autoscaler(AutoscalerSettings(tokens_per_s=WORKER_TOKENS_PER_S), Exported())
    model = next(iter(scaler._models.values()))
    model.spec = model.spec.model_copy(update={"max_inflight": 8})
    running = PoolView({}, 0, 0.0, 0, 0.0, 4, 4, "Stable", 32)
    seen = scaler._observe(model, running, 0.0)
    assert seen.holding == 4
    policy = Policy(AutoscalerSettings(stabilization_s=0).targets())
    decided = [policy.decide(replace(seen, now=t)) for t in (1.0, 400.0, 800.0)]
    assert [d.desired for d in decided] == [4, 4, 4]
    assert policy.decide(replace(seen, now=900.0, in_flight_records=8, holding=1)).desired == 1
