"""The policy on arrival curves, simulated with the service rate and start-up time measured
on this machine (tools/bench/autoscale_sim.py; figures in docs/autoscaling.md)."""

from __future__ import annotations

import pytest

from schemas.lanes import Lane
from tools.bench.autoscale_sim import STARTUP_S, Run, curves, local_targets, simulate

TARGETS = local_targets(min_replicas=1, max_replicas=3)
BATCH_S = TARGETS.drain_s[Lane.BATCH]


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    zero = local_targets(min_replicas=0, max_replicas=3)
    return {
        c.name.split(" ")[0]: simulate(c, zero if c.name.startswith("idle") else TARGETS)
        for c in curves()
    }


def test_a_burst_drains_within_its_target_plus_a_start_up(runs: dict[str, Run]) -> None:
    run = runs["burst"]
    assert max(run.replicas) == 2  # grew for it
    assert run.drains and run.drains[0] <= BATCH_S + STARTUP_S
    assert run.replicas[-1] == TARGETS.min_replicas  # and came back down


def test_a_day_is_followed_without_flapping(runs: dict[str, Run]) -> None:
    run = runs["a"]
    assert max(run.replicas) == 3 and min(run.replicas) == 1
    assert run.changes_per_hour() <= 4
    assert max(run.backlog) < 10 * 140  # never more than ten requests waiting


def test_an_idle_pool_goes_to_zero_and_a_burst_brings_it_back(runs: dict[str, Run]) -> None:
    run = runs["idle"]
    burst_at = 900
    assert run.replicas[burst_at - 1] == 0
    assert run.drains and run.drains[0] <= BATCH_S + 2 * STARTUP_S
    assert run.replicas[-1] == 0  # and went back to zero after it


def test_a_trickle_needs_one_replica_and_no_change(runs: dict[str, Run]) -> None:
    run = runs["trickle:"]
    assert set(run.replicas) == {1} and run.changes == 0


def test_a_replica_lost_mid_burst_is_replaced(runs: dict[str, Run]) -> None:
    run = runs["burst,"]
    lost_at = 120
    assert run.ready[lost_at] < run.ready[lost_at - 1]  # it died
    assert any(r > run.ready[lost_at] for r in run.ready[lost_at:])  # and came back
    assert run.drains and run.drains[0] <= BATCH_S + 2 * STARTUP_S
