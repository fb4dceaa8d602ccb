"""Exponential backoff with jitter: the one retry policy of every retry loop in llmq."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a failed call again: delays double up to a cap, each jittered.

    Equal jitter (a delay between half and all of the exponential figure) spreads the
    retries of many requests that failed together without ever retrying at once; where the
    server said when (Retry-After, an open circuit's cooldown), the jittered delay is added
    to that moment, which many requests share.
    """

    max_attempts: int = 4
    """Attempts in all, the first one included."""
    base_delay_s: float = 0.5
    """The delay before the second attempt, before jitter; it doubles per attempt."""
    max_delay_s: float = 8.0
    """The cap on one delay, before jitter."""
    budget_s: float = 30.0
    """No retry starts later than this after the first attempt started (the stream
    processor's: after the first attempt failed, so that queue time is not spent from it)."""
    uniform: Callable[[], float] = field(default=random.random, compare=False)
    """A uniform number in [0, 1); injectable so tests are deterministic."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 < self.base_delay_s <= self.max_delay_s:
            raise ValueError("need 0 < base_delay_s <= max_delay_s")
        if self.budget_s <= 0:
            raise ValueError(f"budget_s must be positive, got {self.budget_s}")

    def delay(
        self, attempt: int, elapsed_s: float, retry_after_s: float | None = None
    ) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None when it must not happen.

        `attempt` is the attempt that just failed (1 for the first), `elapsed_s` the time
        since the first one started (see budget_s), `retry_after_s` what the server asked
        for (429, 503, an open circuit): it is honoured, with the jittered backoff on top
        so that the requests told the same moment do not all retry at it; a wait that would
        overrun the budget means giving up now.
        """
        if attempt >= self.max_attempts:
            return None
        wait = self.backoff(attempt)
        if retry_after_s is not None:
            wait += retry_after_s
        if elapsed_s + wait > self.budget_s:
            return None
        return wait

    def backoff(self, attempt: int) -> float:
        """The jittered wait after attempt `attempt` failed, regardless of the bounds: for a
        loop that must retry until it succeeds (an outcome that may not be lost, whose record
        stays uncommitted meanwhile)."""
        exponential = min(self.max_delay_s, self.base_delay_s * 2.0 ** min(attempt - 1, 64))
        return exponential * (0.5 + self.uniform() / 2)
