"""The autoscaler's policy, its rates and its ledger: pure, so every rule is checked here."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoscaler.ledger import Ledger
from autoscaler.policy import Observation, Policy, Targets
from autoscaler.rates import ArrivalRate, PoolRates, ServiceRate
from schemas.lanes import Lane

DRAIN = {Lane.INTERACTIVE: 10.0, Lane.STANDARD: 60.0, Lane.BATCH: 600.0}


def _policy(min_replicas: int = 1, max_replicas: int = 4, **targets: float) -> Policy:
    return Policy(Targets(DRAIN, min_replicas, max_replicas, **targets))


def _seen(now: float, lane: Lane = Lane.BATCH, tokens: float = 0.0, **more: float) -> Observation:
    fields: dict[str, float] = {
        "arrival_tokens_per_s": 0.0,
        "tokens_per_s": 100.0,
        "running": 1,
        "partitions": 12,
        **more,
    }
    return Observation(
        now=now,
        backlog_tokens={lane: tokens},
        backlog_records=int(tokens > 0) * max(1, int(tokens // 100)),
        arrival_tokens_per_s=fields["arrival_tokens_per_s"],
        tokens_per_s=fields["tokens_per_s"],
        running=int(fields["running"]),
        partitions=int(fields["partitions"]),
    )


def test_enough_replicas_to_drain_each_lane_within_its_target() -> None:
    # 6,000 batch tokens in 600 s at 100 tok/s a replica: 0.1 replica, so 1.
    assert _policy().decide(_seen(0, Lane.BATCH, 6_000)).desired == 1
    # The same tokens interactive, in 10 s: 6 replicas, capped at 4.
    decision = _policy().decide(_seen(0, Lane.INTERACTIVE, 6_000))
    assert decision.desired == 4 and decision.needed == pytest.approx(6.0)
    assert "capped at 4" in decision.reason


def test_arrivals_count_as_well_as_the_backlog() -> None:
    decision = _policy().decide(_seen(0, Lane.STANDARD, 6_000, arrival_tokens_per_s=150))
    assert decision.needed == pytest.approx(1.0 + 1.5)  # 6,000 / 60 / 100 + 150 / 100
    assert decision.desired == 3
    assert decision.reason.startswith("3 replicas: standard 6000 tok in 60s")


def test_a_smaller_pool_measured_to_keep_up_is_enough() -> None:
    """Two engines on two cores serve 53 tok/s each; one alone served 150: 66 tok/s of
    arrivals need 1.25 replicas at this size's rate, but one replica kept up with more."""
    seen = _seen(0, arrival_tokens_per_s=66, tokens_per_s=53, running=2)
    measured = replace(seen, capacity={1: 150.0, 2: 106.0})
    assert _policy().decide(seen).desired == 2
    policy = _policy(stabilization_s=0)
    policy.decide(replace(seen, now=-1))  # it has seen this pool before: no restart
    decision = policy.decide(measured)
    assert decision.desired == 1 and decision.needed == pytest.approx(66 / 53)
    assert "1 measured at 150 tok/s keep up" in decision.reason
    # More work than any measured size kept up with: the rate of this size decides.
    assert _policy().decide(replace(measured, arrival_tokens_per_s=160)).desired == 4


def test_down_only_with_headroom_so_work_at_a_boundary_does_not_flip_the_pool() -> None:
    policy = _policy(stabilization_s=0)
    # 1.5 replicas of work: 2; then 0.9: one would hold it with only 10% spare, so 2 stay.
    assert policy.decide(_seen(0, arrival_tokens_per_s=150)).desired == 2
    held = policy.decide(_seen(1, arrival_tokens_per_s=90))
    assert held.desired == 2 and "fewer would have less than 20% to spare" in held.reason
    # 0.8: one holds it with 20% spare, so 1; more than one's worth goes up at once.
    assert policy.decide(_seen(2, arrival_tokens_per_s=80)).desired == 1
    assert policy.decide(_seen(3, arrival_tokens_per_s=105)).desired == 2


def test_partitions_cap_the_pool() -> None:
    assert (
        _policy(max_replicas=10).decide(_seen(0, Lane.INTERACTIVE, 9e9, partitions=3)).desired == 3
    )


def test_up_at_once_down_only_after_the_window() -> None:
    policy = _policy(stabilization_s=60)
    first = policy.decide(_seen(0, Lane.INTERACTIVE, 3_000))
    assert first.desired == first.target == 3
    decision = policy.decide(_seen(30, Lane.INTERACTIVE, 100))
    assert decision.desired == 3 and "held at 3 by the 60s down-scale window" in decision.reason
    assert decision.target == 1  # what the pool would run but for the window
    assert policy.decide(_seen(59, Lane.INTERACTIVE, 100)).desired == 3
    assert policy.decide(_seen(61, Lane.INTERACTIVE, 100)).desired == 1  # the 3 left the window
    assert policy.decide(_seen(62, Lane.INTERACTIVE, 4_000)).desired == 4  # up again at once


def test_a_restarted_policy_holds_the_pool_it_finds_for_a_window() -> None:
    """A steady pool of 4 (16,000 tok/s at 5,000 each) seen by a restarted autoscaler, whose
    arrival rate is not known yet: the backlog alone needs 1, but 4 stay for the window."""
    policy = _policy(stabilization_s=300)
    restart = _seen(0, Lane.STANDARD, 76_800, tokens_per_s=5_000, running=4)
    first = policy.decide(restart)
    assert first.desired == 4 and first.target == 1
    assert "held at 4 by the 300s down-scale window" in first.reason
    assert policy.decide(replace(restart, now=299)).desired == 4
    assert policy.decide(replace(restart, now=301)).desired == 1  # nothing came: it goes
    # The present size is held, not raised past the bounds.
    assert _policy(max_replicas=2).decide(restart).desired == 2


def test_an_idle_pool_goes_to_zero_and_comes_back_on_the_first_record() -> None:
    policy = _policy(min_replicas=0, stabilization_s=0, idle_s=120)
    assert policy.decide(_seen(0)).desired == 1  # not idle for long yet
    assert policy.decide(_seen(119)).desired == 1
    assert policy.decide(_seen(120)).desired == 0
    back = policy.decide(_seen(121, Lane.BATCH, 10, running=0))
    assert back.desired == 1 and "1 records" in back.reason
    assert policy.decide(_seen(200)).desired == 1  # idle again: the clock starts over


def test_a_restarted_policy_leaves_an_idle_pool_at_zero() -> None:
    """A new autoscaler (a restart, a rollout) that finds a pool at zero with nothing to do
    does not wake it for idle_s; work waiting, or a pool running, is as before."""
    targets = {"min_replicas": 0, "stabilization_s": 300, "idle_s": 600}
    assert _policy(**targets).decide(_seen(0, running=0)).desired == 0
    woken = _policy(**targets).decide(_seen(0, Lane.BATCH, 10, running=0))
    assert woken.desired >= 1 and "1 records" in woken.reason
    running = _policy(**targets)
    assert running.decide(_seen(0, running=1)).desired == 1  # idle for idle_s from now
    assert running.decide(_seen(599, running=1)).desired == 1
    assert running.decide(_seen(600, running=1)).desired == 1  # the window holds it
    assert running.decide(_seen(901, running=1)).desired == 0


def test_a_pool_whose_group_is_gone_gets_one_worker_to_make_it_again() -> None:
    """A group that does not exist (Dead: a model no worker served yet, or its offsets
    expired) makes the front door refuse the model, so no record comes to wake the pool:
    one worker is held, found at zero or not, until its group is back; then the usual idle
    rule takes it away. A group kept without workers (Empty) is left at zero."""
    targets = {"min_replicas": 0, "stabilization_s": 60, "idle_s": 120}
    policy = _policy(**targets)
    gone = replace(_seen(0, running=0), group_gone=True)
    first = policy.decide(gone)
    assert first.desired == 1 and "its group is gone" in first.reason
    assert policy.decide(replace(gone, now=500)).target == 1  # however long
    # Its worker joined and committed: idle from the moment the group is back.
    assert policy.decide(_seen(600)).target == 1
    assert policy.decide(_seen(719)).target == 1
    assert policy.decide(_seen(720)).target == 0
    assert policy.decide(_seen(781)).desired == 0  # once the window agrees
    assert _policy(**targets).decide(_seen(0, running=0)).desired == 0  # an Empty group
    # A floor above zero is the floor, group or not.
    kept = _policy(min_replicas=2).decide(gone)
    assert kept.desired == 2 and "its group is gone" not in kept.reason


def test_a_floor_of_min_replicas_without_work() -> None:
    decision = _policy(min_replicas=2).decide(_seen(0))
    assert decision.desired == 2 and "the floor is 2" in decision.reason


def test_targets_are_checked() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        Targets(DRAIN, min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="drain time"):
        Targets({Lane.BATCH: 1.0})


def test_arrivals_are_a_median_so_a_burst_is_not_a_rate() -> None:
    rate = ArrivalRate(intervals=5, min_interval_s=1.0)
    totals = [0, 100, 200, 100_300, 100_400, 100_500]  # 100 a second, and one burst
    for t, total in enumerate(totals):
        rate.observe(float(t), float(total))
    assert rate.per_s() == 100.0


def test_a_burst_right_after_the_start_is_not_a_rate_either() -> None:
    rate = ArrivalRate(intervals=12, min_interval_s=2.0)
    rate.observe(0.0, 0.0)
    rate.observe(2.0, 0.0)
    rate.observe(4.0, 50_000.0)
    assert rate.per_s() == 0.0


def test_a_restarted_autoscaler_sees_a_steady_rate_after_one_interval() -> None:
    """Not half a window later: intervals not seen yet are not intervals of no arrivals."""
    rate = ArrivalRate(intervals=12, min_interval_s=5.0)
    assert rate.per_s() == 0.0
    rate.observe(0.0, 1_000_000.0)
    rate.observe(5.0, 1_080_000.0)
    assert rate.per_s() == 16_000.0
    rate.observe(10.0, 1_160_000.0)
    assert rate.per_s() == 16_000.0


def test_sparse_arrivals_seen_at_a_short_tick_are_a_rate_not_zero() -> None:
    """One record of 30 tokens every two seconds, a tick every second: each interval spans
    five ticks, so none is empty."""
    rate = ArrivalRate(intervals=12, min_interval_s=5.0)
    for t in range(120):
        rate.observe(float(t), 30.0 * (t // 2))
    assert rate.per_s() == pytest.approx(15.0, rel=0.25)


def test_the_service_rate_is_measured_on_a_busy_pool_only() -> None:
    rate = ServiceRate(prior=600, window_s=100, min_s=0)
    rate.observe(served_tokens=100, served_records=10, replica_seconds=10, saturated=False)
    assert rate.per_s() == 600 and not rate.measured
    rate.observe(served_tokens=0, served_records=0, replica_seconds=10, saturated=True)
    assert rate.per_s() == 600 and not rate.measured  # nothing committed yet
    rate.observe(served_tokens=4_000, served_records=10, replica_seconds=10, saturated=True)
    assert rate.per_s() == 400 and rate.measured  # from the first commit on
    rate.observe(served_tokens=0, served_records=0, replica_seconds=10, saturated=True)
    assert rate.per_s() == 200
    rate.observe(served_tokens=900, served_records=10, replica_seconds=10, saturated=False)
    assert rate.per_s() == 200  # idle time says nothing


def test_a_pool_back_at_a_size_counts_from_its_first_commit_there() -> None:
    """A pool that shrinks back to one replica commits nothing for minutes while that
    replica's generations run (CI, 2026-11-30: the autoscaler read 0 tok/s, wanted 20
    replicas and started the one it had just stopped): those minutes are not its rate."""
    rates = PoolRates(prior=150, window_s=600, min_s=0)
    rates.observe(served_tokens=0, served_records=0, seconds=100, size=1, saturated=True)
    rates.observe(served_tokens=5_000, served_records=10, seconds=50, size=1, saturated=True)
    assert rates.capacity() == {1: 100}
    rates.observe(served_tokens=4_000, served_records=10, seconds=20, size=2, saturated=True)
    rates.observe(
        served_tokens=0, served_records=0, seconds=200, size=1, saturated=True
    )  # back at 1
    assert rates.capacity() == {1: 100, 2: 200}
    rates.observe(served_tokens=10_000, served_records=10, seconds=50, size=1, saturated=True)
    assert rates.capacity() == {1: 15_000 / 100, 2: 200}


def test_lumpy_commits_average_out_over_the_window() -> None:
    """Generations that start together finish together: 3,500 tokens every 35 s of a
    replica's time is 100 tok/s, however the ticks (5 s) fall between the lumps."""
    rate = ServiceRate(prior=600, window_s=120, min_s=0)
    seen = []
    for tick in range(70):
        lump = tick % 7 == 6
        rate.observe(3_500 if lump else 0, 35 if lump else 0, 5, saturated=True)
        seen.append(rate.per_s())
    full = seen[30:]  # once the window holds 120 s from the first lump
    assert min(full) >= 100 * 0.8 and max(full) <= 100 * 1.25
    assert seen[5] == 600  # the prior, until the first lump


def test_a_rate_spanning_less_than_min_s_is_not_yet_a_rate() -> None:
    """A lump of commits 10 s after the pool reached this size is not what it serves:
    the prior holds until 120 replica-seconds were seen, then the ratio of sums."""
    rate = ServiceRate(prior=150, window_s=600, min_s=120)
    rate.observe(served_tokens=10_000, served_records=10, replica_seconds=20, saturated=True)
    assert rate.per_s() == 150 and not rate.measured
    for _ in range(5):
        rate.observe(served_tokens=0, served_records=0, replica_seconds=20, saturated=True)
    assert rate.measured and rate.per_s() == pytest.approx(10_000 / 120)


def test_a_size_is_measured_once_its_engines_turned_over() -> None:
    """CI, 2026-12-01: one replica held 64 long generations for minutes while a few short
    records committed beside them; those minutes read as 0 tok/s at size 1, and each time
    the pool was back at one replica the autoscaler wanted 15 and started the second
    again. A size's rate counts once it committed as many records as its engines hold."""
    rates = PoolRates(prior=150, window_s=600, min_s=120, in_flight=64)
    for _ in range(16):  # 160 s at one replica: 16 short records commit, 0.8 tok/s
        rates.observe(served_tokens=8, served_records=1, seconds=10, size=1, saturated=True)
    assert rates.capacity() == {}
    for _ in range(30):  # 300 s at two: 128 records, 116 tok/s in all
        rates.observe(served_tokens=1_160, served_records=5, seconds=10, size=2, saturated=True)
    assert rates.capacity() == {2: pytest.approx(116)}
    rates.observe(served_tokens=0, served_records=0, seconds=10, size=1, saturated=True)
    assert rates.per_replica(1) == pytest.approx(58)  # the measured size's, not 0.5
    for _ in range(60):  # one replica turns over its 64 records: its own rate counts
        rates.observe(served_tokens=700, served_records=2, seconds=10, size=1, saturated=True)
    assert rates.per_replica(1) == pytest.approx(70, rel=0.05)


def test_each_pool_size_has_its_own_rate() -> None:
    rates = PoolRates(prior=600, window_s=100, min_s=0)
    assert rates.per_replica(2) == 600 and rates.capacity() == {}
    rates.observe(served_tokens=1_500, served_records=10, seconds=10, size=1, saturated=True)
    assert rates.per_replica(1) == 150 and rates.per_replica(3) == 150  # the nearest measured
    rates.observe(served_tokens=1_000, served_records=10, seconds=10, size=2, saturated=True)
    rates.observe(
        served_tokens=5_000, served_records=10, seconds=10, size=3, saturated=False
    )  # not busy
    assert rates.capacity() == {1: 150, 2: 100}
    assert rates.per_replica(2) == 50 and rates.per_replica(3) == 50
    rates.observe(
        served_tokens=1_000, served_records=10, seconds=10, size=0, saturated=True
    )  # nobody serves
    assert rates.capacity() == {1: 150, 2: 100}


def test_the_ledger_weighs_records_by_their_tokens() -> None:
    ledger = Ledger(default_tokens=50)
    for offset, tokens in [(10, 100), (11, 300), (12, 200)]:
        ledger.add(offset, tokens)
    assert ledger.between(10, 13) == 600
    assert ledger.between(11, 12) == 300
    assert ledger.between(8, 13) == 600 + 2 * 200  # two unseen records at the mean
    ledger.forget_before(12)
    assert ledger.between(12, 13) == 200
    ledger.add(12, 999)  # a repeat: ignored
    ledger.add(13, 10)
    assert ledger.between(12, 14) == 210
    assert Ledger(default_tokens=50).between(0, 3) == 150
