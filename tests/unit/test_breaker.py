"""The pure fault-tolerance logic of the HTTP engine: the circuit breaker and the backoff."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

from schemas.errors import ErrorCode, LlmqError
from schemas.retry import RetryPolicy
from tests.unit.clock import Clock
from workers.breaker import BreakerState, CircuitBreaker

_names = itertools.count()


def make_breaker(clock: Clock, threshold: int = 3, cooldown_s: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(
        f"model-{next(_names)}", failure_threshold=threshold, cooldown_s=cooldown_s, clock=clock
    )


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """Read through a call, so that mypy does not narrow the property across calls."""
    return breaker.state


def open_breaker(breaker: CircuitBreaker, failures: int = 3) -> None:
    for _ in range(failures):
        breaker.acquire()
        breaker.failure("HTTP 503: overloaded")


def test_opens_after_the_threshold_of_consecutive_failures() -> None:
    breaker = make_breaker(Clock())
    for _ in range(2):
        assert breaker.acquire() is False
        breaker.failure("HTTP 500")
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.failure("HTTP 500")
    assert state_of(breaker) is BreakerState.OPEN


def test_a_success_resets_the_count() -> None:
    breaker = make_breaker(Clock())
    open_breaker(breaker, 2)
    breaker.success()
    open_breaker(breaker, 2)
    assert state_of(breaker) is BreakerState.CLOSED


def test_open_fails_fast_saying_since_when_and_when_to_retry() -> None:
    clock = Clock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now += 4
    with pytest.raises(LlmqError) as caught:
        breaker.acquire()
    error = caught.value
    assert error.code is ErrorCode.ENGINE_ERROR
    assert error.retriable
    assert error.retry_after_s == pytest.approx(6.0)
    assert "circuit" in error.message
    assert "open since 4.0 s ago" in error.message
    assert "3 consecutive failures" in error.message
    assert "HTTP 503: overloaded" in error.message


def test_a_refusal_is_never_marked_retried_and_says_when_to_try_again() -> None:
    """No call was made for it, whatever calls the caller made before: the stream
    processor's retry, after retry_after_s, takes over (marked retried, a request in its
    engine's retry loop when the circuit opened would fail for good)."""
    clock = Clock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now += 4
    with pytest.raises(LlmqError) as caught:
        breaker.acquire()
    assert not caught.value.retried
    assert caught.value.retry_after_s == pytest.approx(6.0)
    clock.now += 6
    assert breaker.acquire() is True  # the probe; the next call meets it
    with pytest.raises(LlmqError, match="a probe is testing it") as caught:
        breaker.acquire()
    assert not caught.value.retried


def test_a_call_refused_while_the_probe_runs_waits_briefly_not_a_cooldown() -> None:
    """The probe's verdict comes with its first token: the others try again soon after."""
    clock = Clock()
    breaker = CircuitBreaker(
        f"model-{next(_names)}", failure_threshold=1, cooldown_s=30.0, probe_wait_s=0.5, clock=clock
    )
    open_breaker(breaker, 1)
    clock.now += 30
    assert breaker.acquire() is True
    with pytest.raises(LlmqError) as caught:
        breaker.acquire()
    assert caught.value.retry_after_s == 0.5
    assert caught.value.message.endswith("a probe is testing it; retry in 0.5 s")


def test_half_open_lets_one_probe_through_and_its_success_closes() -> None:
    clock = Clock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now += 10
    assert breaker.acquire() is True
    assert state_of(breaker) is BreakerState.HALF_OPEN
    with pytest.raises(LlmqError, match="a probe is testing it"):
        breaker.acquire()
    breaker.success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.acquire() is False


def test_a_failed_probe_opens_again_for_a_full_cooldown() -> None:
    clock = Clock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now += 15
    assert breaker.acquire() is True
    breaker.failure("connection refused")
    assert state_of(breaker) is BreakerState.OPEN
    with pytest.raises(LlmqError) as caught:
        breaker.acquire()
    assert caught.value.retry_after_s == pytest.approx(10.0)
    assert "connection refused" in caught.value.message


def test_an_abandoned_probe_lets_the_next_call_probe() -> None:
    clock = Clock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now += 10
    assert breaker.acquire() is True
    breaker.abandon()
    assert breaker.acquire() is True


def test_late_failures_while_open_do_not_extend_the_cooldown() -> None:
    clock = Clock()
    breaker = make_breaker(clock)
    open_breaker(breaker)
    clock.now += 5
    breaker.failure("a request admitted before the circuit opened")
    clock.now += 5
    assert breaker.acquire() is True


def test_opening_is_a_warning_with_the_last_failure_and_closing_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="workers.breaker")
    clock = Clock()
    breaker = CircuitBreaker("logged-model", failure_threshold=2, cooldown_s=10.0, clock=clock)
    breaker.failure("HTTP 500")
    breaker.success()  # closed all along: nothing to say
    assert caplog.records == []
    breaker.failure("HTTP 500")
    breaker.failure("HTTP 503")
    clock.now += 10
    assert breaker.acquire() is True
    breaker.failure("HTTP 502")  # the probe failed: open again
    clock.now += 10
    assert breaker.acquire() is True
    breaker.success()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    opened = "the circuit to logged-model is open after {} consecutive failures (the last: {})"
    assert lines == [
        (logging.WARNING, opened.format(2, "HTTP 503") + ": calls fail fast for 10 s"),
        (logging.WARNING, opened.format(3, "HTTP 502") + ": calls fail fast for 10 s"),
        (logging.INFO, "the circuit to logged-model is closed again: its server answered"),
    ]


def test_the_state_is_a_prometheus_gauge() -> None:
    clock = Clock()
    name = "gauged-model"
    breaker = CircuitBreaker(name, failure_threshold=3, cooldown_s=10.0, clock=clock)

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("llmq_worker_breaker_state", {"model": name})

    assert gauge() == 0
    open_breaker(breaker)
    assert gauge() == 2
    clock.now += 10
    breaker.acquire()
    assert gauge() == 1
    breaker.success()
    assert gauge() == 0


@pytest.mark.parametrize(
    ("threshold", "cooldown_s", "probe_wait_s"), [(0, 1.0, 1.0), (1, 0.0, 1.0), (1, 1.0, 0.0)]
)
def test_rejects_nonsense_settings(threshold: int, cooldown_s: float, probe_wait_s: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(
            "x", failure_threshold=threshold, cooldown_s=cooldown_s, probe_wait_s=probe_wait_s
        )


def test_backoff_doubles_up_to_the_cap_with_jitter_between_half_and_all() -> None:
    low = RetryPolicy(
        max_attempts=10, base_delay_s=0.5, max_delay_s=4.0, budget_s=1e6, uniform=lambda: 0.0
    )
    high = RetryPolicy(
        max_attempts=10, base_delay_s=0.5, max_delay_s=4.0, budget_s=1e6, uniform=lambda: 1.0
    )
    assert [low.delay(n, 0.0) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [high.delay(n, 0.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_stops_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.delay(2, 0.0) is not None
    assert policy.delay(3, 0.0) is None


def test_backoff_honours_retry_after_with_the_jittered_backoff_on_top() -> None:
    policy = RetryPolicy(base_delay_s=0.1, uniform=lambda: 0.5)
    assert policy.delay(1, 0.0, retry_after_s=3.0) == pytest.approx(3.075)
    assert policy.delay(1, 0.0, retry_after_s=0.01) == pytest.approx(0.085)


def test_retries_told_the_same_moment_spread_out_after_it() -> None:
    """An open circuit tells every request it refuses the same moment (its cooldown's end):
    their retries land spread over the jitter after it, not all at once on it."""
    draws = iter([0.0, 0.3, 0.6, 0.9])
    policy = RetryPolicy(base_delay_s=1.0, budget_s=300.0, uniform=lambda: next(draws))
    opened_at, cooldown_s = 1000.0, 30.0
    landings = [
        now + delay
        for now in (1000.5, 1010.0, 1020.0, 1029.0)
        if (delay := policy.delay(1, 0.0, opened_at + cooldown_s - now)) is not None
    ]
    assert landings == pytest.approx([1030.5, 1030.65, 1030.8, 1030.95])


def test_backoff_gives_up_rather_than_overrun_the_budget() -> None:
    policy = RetryPolicy(base_delay_s=1.0, budget_s=10.0, uniform=lambda: 1.0)
    assert policy.delay(1, 8.5) == 1.0
    assert policy.delay(1, 9.5) is None
    assert policy.delay(1, 0.0, retry_after_s=30.0) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"base_delay_s": 0.0},
        {"base_delay_s": 5.0, "max_delay_s": 1.0},
        {"budget_s": 0.0},
    ],
)
def test_backoff_rejects_nonsense_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)
