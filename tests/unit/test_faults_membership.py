"""What the autoscale-down scenario calls a failure of its extra worker."""

from __future__ import annotations

from typing import Any

import pytest

from tools.faults.membership import _scale_down_findings, _started_because
from tools.faults.outcome import Finding, Kind

WELL = {"served": True, "down": True, "left": 24, "drained": True, "starts": 1}
"""It served, left with 24 of the burst unanswered, drained, and stayed gone."""


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ({}, []),
        (
            {"served": False, "down": False},
            [(Kind.TIMING, "the autoscaler did not bring w-2 into service")],
        ),
        ({"down": False}, [(Kind.TIMING, "the autoscaler did not take w-2 away")]),
        (
            {"left": 0},
            [(Kind.TIMING, "the scale-down came after the burst: all of it was answered")],
        ),
        ({"drained": False}, [(Kind.BROKEN, "w-2 did not drain and exit by itself")]),
        ({"starts": 2}, [(Kind.TIMING, "the autoscaler started w-2 2 times (flapping)")]),
    ],
)
def test_the_extra_worker_must_drain_and_its_late_or_repeated_moves_are_timing(
    change: dict[str, Any], found: list[tuple[Kind, str]]
) -> None:
    """Only a worker that did not drain breaks a guarantee: when the autoscaler moves
    follows the machine's speed (CI tolerates flapping)."""
    assert _scale_down_findings("w-2", **{**WELL, **change}) == [Finding(*f) for f in found]


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
