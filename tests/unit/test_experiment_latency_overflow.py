"""Latencies past the histogram: `llmq costs --experiment` capped them at its last bucket, so
100 answers of 2 hours each read p50 944,061 ms [891,251, 1,000,000], an interval without the
truth. The buckets now reach 27.8 hours, one more holds every latency above, and a quantile
there reads unbounded; the figures stored before (bucket 120 held every latency above 891 s)
read as what they were."""

from __future__ import annotations

import pytest

from streams.experiment_stats import LATENCY, LATENCY_EDGES_MS, latency_bucket
from tools.costs import experiment

TWO_HOURS_MS = 7_200_000.0


def _arm(**buckets: float) -> experiment.ArmReport:
    sums = {"answers": sum(buckets.values())}
    (report,) = experiment.compare({"a": {**sums, **buckets}})
    return report


def test_answers_of_two_hours_read_two_hours_within_an_interval_that_holds_them() -> None:
    report = _arm(**{f"{LATENCY}{latency_bucket(TWO_HOURS_MS)}": 100.0})
    assert report.latency_p50_ms == pytest.approx(TWO_HOURS_MS, rel=0.12)  # a bucket's width
    assert report.latency_p50_interval is not None
    low, high = report.latency_p50_interval
    assert high is not None and low <= TWO_HOURS_MS <= high


def test_a_latency_above_the_last_edge_reads_unbounded_not_the_edge() -> None:
    longest = LATENCY_EDGES_MS[-1]
    report = _arm(**{f"{LATENCY}{latency_bucket(1.1 * longest)}": 100.0})
    for value, interval in (
        (report.latency_p50_ms, report.latency_p50_interval),
        (report.latency_p95_ms, report.latency_p95_interval),
    ):
        assert value is None and interval == (longest, None)
    line = experiment.table([report]).splitlines()[-1]
    assert "> 100,000,000 [100,000,000, unbounded]" in line


def test_the_last_bucket_stored_before_reads_as_any_latency_above_891_s() -> None:
    """The reviewer's 100 answers of 2 hours, as the old stream processor stored them."""
    report = _arm(**{f"{experiment.LEGACY}120": 100.0})
    assert report.latency_p50_ms is None  # not 944,061: more than 891,251, unbounded
    assert report.latency_p50_interval == (LATENCY_EDGES_MS[119], None)
    line = experiment.table([report]).splitlines()[-1]
    assert "> 891,251 [891,251, unbounded]" in line


def test_figures_stored_before_and_after_add_up() -> None:
    """Below 891 s the old buckets are the new ones; above it an old count may be any
    latency, so the new counts there join it, unbounded."""
    bucket = latency_bucket(100.0)
    shared = _arm(**{f"{experiment.LEGACY}{bucket}": 50.0, f"{LATENCY}{bucket}": 50.0})
    assert shared.answers == 100 and shared.latency_p95_interval == (
        LATENCY_EDGES_MS[bucket - 1],
        LATENCY_EDGES_MS[bucket],
    )
    mixed = _arm(
        **{
            f"{LATENCY}{bucket}": 60.0,
            f"{experiment.LEGACY}120": 20.0,
            f"{LATENCY}{latency_bucket(950_000.0)}": 20.0,  # in 120 now, (891 s, 1,000 s]
        }
    )
    assert mixed.latency_p50_ms == pytest.approx(100.0, rel=0.12)
    assert mixed.latency_p95_ms is None
    assert mixed.latency_p95_interval == (LATENCY_EDGES_MS[119], None)
