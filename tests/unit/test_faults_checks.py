"""Which findings fail a fault run: broken guarantees (error replies a scenario does not
expect, memory past its bound, a worker that did not drain) against observations that
depend on the machine's timing."""

from __future__ import annotations

import pytest

from tools.faults.outcome import Finding, Kind, Outcome
from tools.faults.plan import SCENARIOS
from tools.faults.probe import drained
from tools.faults.scenarios import memory_findings
from tools.faults.tally import Tally

MIB = 2.0**20


def _tally(errors: dict[str, int] | None = None) -> Tally:
    """Every accepted request answered once: nothing lost, nothing conflicting."""
    return Tally(
        sent=40, accepted=40, replies=40, lost=0, duplicates=0, conflicting=0, errors=errors or {}
    )


def test_a_broken_guarantee_fails_a_row_that_lost_nothing_and_a_timing_finding_does_not() -> None:
    broken = Outcome("redis-stop", "Redis stopped", _tally())
    broken.broken("the exact cache did not answer a repeat after Redis came back")
    timing = Outcome("worker-kill", "kill -9 of the worker", _tally())
    timing.reached(held=False, what="half the burst in the engine at the kill")
    assert broken.failed
    assert not timing.failed
    assert timing.findings == [
        Finding(
            Kind.TIMING,
            "half the burst in the engine at the kill was not reached before the fault: "
            "not tested as claimed",
        )
    ]


def test_a_precondition_reached_is_no_finding() -> None:
    out = Outcome("worker-kill", "kill -9 of the worker", _tally())
    out.reached(held=True, what="half the burst in the engine at the kill")
    assert out.findings == []


@pytest.mark.parametrize(
    ("scenario", "errors", "found"),
    [
        ("worker-kill", {}, []),
        ("worker-kill", {"internal_error": 40}, [(Kind.BROKEN, "internal_error 40")]),
        ("overload", {"expired": 2}, [(Kind.BROKEN, "expired 2")]),
        ("poison", {"invalid_request": 1, "unknown_model": 1}, []),
        (
            "poison",
            {"invalid_request": 2, "unknown_model": 1},
            [(Kind.BROKEN, "invalid_request 1")],
        ),
        ("crash-loop", {"crash_loop": 1}, []),
        ("crash-loop", {"crash_loop": 3}, [(Kind.BROKEN, "crash_loop 2")]),
        ("kafka-stop", {"internal_error": 3}, [(Kind.TIMING, "internal_error 3")]),
        (
            "kafka-stop",
            {"internal_error": 3, "invalid_request": 1},
            [(Kind.BROKEN, "invalid_request 1"), (Kind.TIMING, "internal_error 3")],
        ),
        ("autoscale-down", {"engine_timeout": 5}, [(Kind.TIMING, "engine_timeout 5")]),
    ],
)
def test_error_replies_a_scenario_does_not_cause_on_purpose_are_findings(
    scenario: str, errors: dict[str, int], found: list[tuple[Kind, str]]
) -> None:
    assert SCENARIOS[scenario].error_findings(_tally(errors)) == [
        Finding(kind, f"error replies it does not expect: {codes}") for kind, codes in found
    ]


def test_every_request_answered_with_an_error_fails_the_row() -> None:
    out = Outcome("worker-kill", "kill -9 of the worker", _tally({"internal_error": 40}))
    out.findings += SCENARIOS["worker-kill"].error_findings(_tally({"internal_error": 40}))
    assert out.failed


@pytest.mark.parametrize(
    ("worker_peak", "found"),
    [
        (5_000 * MIB, []),
        (6_000 * MIB, []),
        (
            6_500 * MIB,
            [Finding(Kind.BROKEN, "worker RSS grew 30% under the overload, past the 25% bound")],
        ),
    ],
)
def test_memory_past_its_bound_under_overload_breaks_a_guarantee(
    worker_peak: float, found: list[Finding]
) -> None:
    first = {"worker_rss": 5_000 * MIB, "streams_rss": 1_000 * MIB}
    peak = {"worker_rss": worker_peak, "streams_rss": 1_020 * MIB}
    assert memory_findings(first, peak) == found


def test_memory_not_read_is_not_checked_and_says_so() -> None:
    assert memory_findings({"worker_rss": 5e9}, {"worker_rss": 5e9}) == [
        Finding(Kind.TIMING, "streams RSS was not read: memory not checked")
    ]


@pytest.mark.parametrize(
    ("line", "clean"),
    [
        ("2026-12-03 08:00:01,234 INFO workers: worker local-smollm2-135m-2 stopped", True),
        ("2026-12-03 08:00:01,234 ERROR workers: the worker stopped: the vLLM engine died", False),
        (
            "2026-12-03 08:00:01,234 ERROR llmq.deadline: not stopped 92 s after the signal to "
            "stop: stuck",
            False,
        ),
        ("2026-12-03 08:00:01,234 INFO workers: worker local-m serving m", False),
    ],
)
def test_only_the_drains_own_last_line_says_a_worker_drained(line: str, clean: bool) -> None:
    assert drained(["2026-12-03 08:00:00,000 INFO workers: draining", line]) is clean
