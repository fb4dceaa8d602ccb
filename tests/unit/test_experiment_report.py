"""`llmq costs --experiment`'s arms, from the stream processor's sums."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from llmq.cli import main
from streams.experiment_stats import LATENCY, latency_bucket
from tools.costs import experiment


def test_an_arm_without_timed_answers_shows_no_latency() -> None:
    (report,) = experiment.compare({"b": {"answers": 3.0, "errors": 3.0}})
    assert report.latency_p50_ms is None and report.latency_p95_interval is None
    line = experiment.table([report]).splitlines()[-1]
    assert "1,000,000" not in line and " - " in line


def test_a_timed_arm_reads_its_latency_from_the_histogram() -> None:
    sums = {"answers": 10.0, f"{LATENCY}{latency_bucket(200)}": 10.0}
    (report,) = experiment.compare({"a": sums})
    assert report.latency_p50_ms == pytest.approx(200, rel=0.12)  # one bucket's width
    assert report.latency_p50_interval is not None
    low, high = report.latency_p50_interval
    assert high is not None and low <= 200 <= high


def test_an_arm_of_one_answer_has_no_cost_interval_and_open_latency_intervals() -> None:
    """One answer says nothing of the spread of costs, nor bounds a quantile from above: the
    report says so instead of an interval of zero width (which never held the truth)."""
    sums = {"answers": 1.0, "cost_usd": 0.01, "cost_usd_squared": 1e-4}
    (report,) = experiment.compare({"a": {**sums, f"{LATENCY}{latency_bucket(200)}": 1.0}})
    assert asdict(report)["cost_interval"] is None
    assert report.latency_p95_interval == (0.0, None)
    line = experiment.table([report]).splitlines()[-1]
    assert "0.01 [-]" in line and "[0, unbounded]" in line


def test_the_cost_interval_does_not_reach_below_zero() -> None:
    """Nine $0 answers and one $1: Student's t, symmetric about $0.10, ran to -$0.126."""
    sums = {"answers": 10.0, "cost_usd": 1.0, "cost_usd_squared": 1.0}
    (report,) = experiment.compare({"a": sums})
    assert report.cost_interval is not None
    low, high = report.cost_interval
    assert low == 0.0 and high == pytest.approx(0.326, abs=1e-3)
    assert "0.1 [0, 0.326]" in experiment.table([report]).splitlines()[-1]


def test_the_cached_share_says_it_counts_coalesced_answers_too() -> None:
    """The stream processors count an answer served without a generation of its own, from a
    cache or coalesced, as "cached": the column says so (the sums stored stay readable)."""
    (report,) = experiment.compare({"a": {"answers": 4.0, "cached": 1.0}})
    assert report.cached_rate == 0.25
    head, _, line = experiment.table([report]).splitlines()
    assert head.endswith("cached or coalesced") and line.endswith("25%")


def test_a_p95_of_fewer_than_72_answers_has_no_upper_end() -> None:
    bucket = f"{LATENCY}{latency_bucket(200)}"
    for n, bounded in ((71, False), (72, True)):
        (report,) = experiment.compare({"a": {"answers": float(n), bucket: float(n)}})
        assert report.latency_p95_interval is not None
        assert (report.latency_p95_interval[1] is not None) is bounded


@pytest.mark.parametrize("option", [["--days", "3"], ["--by", "tenant"], ["--by", ""]])
def test_an_experiment_report_refuses_the_days_and_grouping_it_would_ignore(
    option: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its figures are of the experiment's whole life, in one row per arm."""
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing is reached
    assert main(["costs", "--experiment", "e", *option]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"not with {option[0]}" in line
