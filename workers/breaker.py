"""A circuit breaker: stop calling a server that keeps failing, probe it after a cooldown."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import IntEnum

from prometheus_client import Gauge

from schemas.errors import ErrorCode, LlmqError

log = logging.getLogger(__name__)

BREAKER_STATE = Gauge(
    "llmq_worker_breaker_state",
    "Circuit breaker in front of a remote engine: 0 closed, 1 half-open, 2 open",
    ["model"],
)


class BreakerState(IntEnum):
    """The gauge's values."""

    CLOSED = 0
    """Calls go through; consecutive failures are counted."""
    HALF_OPEN = 1
    """The cooldown is over: one probe call goes through, the others still fail fast."""
    OPEN = 2
    """Calls fail at once until the cooldown is over."""


class CircuitBreaker:
    """Closed -> open after `failure_threshold` consecutive failures -> half-open after
    `cooldown_s`, letting one probe through; the probe's success closes it, its failure
    opens it again. Not thread-safe: one event loop uses it.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        probe_wait_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`probe_wait_s` is the retry_after_s of a call refused while the probe runs: its
        verdict comes with its first token, long before another cooldown is over."""
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if cooldown_s <= 0:
            raise ValueError(f"cooldown_s must be positive, got {cooldown_s}")
        if probe_wait_s <= 0:
            raise ValueError(f"probe_wait_s must be positive, got {probe_wait_s}")
        self._name = name
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._probe_wait_s = probe_wait_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._last_failure = ""
        self._opened_at = 0.0
        self._probing = False
        BREAKER_STATE.labels(name).set(self._state)

    @property
    def state(self) -> BreakerState:
        """Where the breaker stands; OPEN turns HALF_OPEN only when a call asks to pass."""
        return self._state

    def acquire(self) -> bool:
        """Let a call through, or raise ENGINE_ERROR when the circuit is open, with when to
        try again (retry_after_s): the rest of the cooldown, or `probe_wait_s` while the
        probe runs. Never marked retried, whatever calls the caller made before: this one
        was not made, so the stream processor's retry, after the wait, is what takes over.

        Returns True when this call is the half-open probe: it must end in `success`,
        `failure` or, when it ends without a verdict (cancelled), `abandon`.
        """
        if self._state is BreakerState.CLOSED:
            return False
        now = self._clock()
        if self._state is BreakerState.OPEN:
            retry_after_s = self._opened_at + self._cooldown_s - now
            if retry_after_s > 0:
                raise self._open_error(now, retry_after_s, "the next probe is due in")
            self._set(BreakerState.HALF_OPEN)
        if self._probing:
            raise self._open_error(now, self._probe_wait_s, "a probe is testing it; retry in")
        self._probing = True
        return True

    def success(self) -> None:
        """The server answered: close the circuit."""
        if self._state is not BreakerState.CLOSED:
            log.info("the circuit to %s is closed again: its server answered", self._name)
        self._failures = 0
        self._probing = False
        self._set(BreakerState.CLOSED)

    def failure(self, reason: str) -> None:
        """The server failed (after it was let through): count it, maybe open the circuit.
        `reason` is the failure's kind, free of content: every caller refused is told it."""
        self._failures += 1
        self._last_failure = reason
        if self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._failures >= self._threshold
        ):
            self._opened_at = self._clock()
            self._probing = False
            self._set(BreakerState.OPEN)
            log.warning(
                "the circuit to %s is open after %d consecutive failures (the last: %s): "
                "calls fail fast for %.0f s",
                self._name,
                self._failures,
                reason,
                self._cooldown_s,
            )

    def abandon(self) -> None:
        """The probe ended without a verdict: let the next call probe instead."""
        self._probing = False

    def _set(self, state: BreakerState) -> None:
        self._state = state
        BREAKER_STATE.labels(self._name).set(state)

    def _open_error(self, now: float, retry_after_s: float, wait: str) -> LlmqError:
        return LlmqError(
            ErrorCode.ENGINE_ERROR,
            f"the circuit to {self._name} is open since {now - self._opened_at:.1f} s ago, "
            f"after {self._failures} consecutive failures (the last: {self._last_failure}); "
            f"{wait} {retry_after_s:.1f} s",
            retry_after_s=retry_after_s,
        )
