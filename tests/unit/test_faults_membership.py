"""What the autoscale-down scenario calls a failure of its extra worker."""

from __future__ import annotations

from typing import Any

import pytest

from tools.faults.membership import _scale_down_findings, _started_because

WELL = {"served": True, "down": True, "left": 24, "said": "worker w-2 stopped", "starts": 1}
"""It served, left with 24 of the burst unanswered, drained, and stayed gone."""


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ({}, []),
        ({"served": False, "down": False}, ["the autoscaler did not bring w-2 into service"]),
        ({"down": False}, ["the autoscaler did not take w-2 away"]),
        ({"left": 0}, ["the scale-down came after the burst: all of it was answered"]),
        ({"said": "killed"}, ["w-2 did not drain and exit by itself"]),
        ({"starts": 2}, ["the autoscaler started w-2 2 times (flapping)"]),
    ],
)
def test_the_extra_worker_must_serve_leave_mid_burst_drain_and_stay_gone(
    change: dict[str, Any], found: list[str]
) -> None:
    assert _scale_down_findings("w-2", **{**WELL, **change}) == found


def test_each_start_is_told_with_the_decision_logged_before_it() -> None:
    said = [
        "2026-11-30 00:25:07,534 INFO autoscaler.service: m: 1 replicas: no backlog",
        "2026-11-30 00:25:09,411 INFO autoscaler.service: m: 2 replicas: interactive 900 tok",
        "2026-11-30 00:25:09,411 INFO autoscaler.local: starting w-2 (replica 2 of 2)",
        "2026-11-30 00:30:10,463 INFO autoscaler.local: stopping w-2 (SIGTERM: it drains first)",
        "2026-11-30 00:31:00,100 INFO autoscaler.service: m: 2 replicas: interactive 2800 tok",
        "2026-11-30 00:31:00,101 INFO autoscaler.local: starting w-2 (replica 2 of 2)",
    ]
    assert _started_because(said, "w-2") == [
        "00:25:09 m: 2 replicas: interactive 900 tok",
        "00:31:00 m: 2 replicas: interactive 2800 tok",
    ]
