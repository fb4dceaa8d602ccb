"""`llmq costs --experiment`'s arms, from the stream processor's sums."""

from __future__ import annotations

import pytest

from streams.experiment_stats import latency_bucket
from tools.costs import experiment


def test_an_arm_without_timed_answers_shows_no_latency() -> None:
    (report,) = experiment.compare({"b": {"answers": 3.0, "errors": 3.0}})
    assert report.latency_p50_ms is None and report.latency_p95_interval is None
    line = experiment.table([report]).splitlines()[-1]
    assert "1,000,000" not in line and " - " in line


def test_a_timed_arm_reads_its_latency_from_the_histogram() -> None:
    sums = {"answers": 4.0, f"latency_ms:{latency_bucket(200)}": 4.0}
    (report,) = experiment.compare({"a": sums})
    assert report.latency_p50_ms == pytest.approx(200, rel=0.12)  # one bucket's width
    assert report.latency_p50_interval is not None
    assert report.latency_p50_interval[0] <= 200 <= report.latency_p50_interval[1]
