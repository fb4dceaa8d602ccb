"""Rates the policy reads: how fast work arrives, and how fast one replica serves it."""

from __future__ import annotations

import statistics
from collections import deque


class ArrivalRate:
    """Tokens per second arriving, from a growing total seen at each tick: the median of the
    last intervals' rates, so one burst (which the backlog term already counts) does not
    pass for a lasting rate, while a rate that lasts shows within half the window. Before a
    whole window was seen, the intervals not seen count as none arriving."""

    def __init__(self, intervals: int = 12) -> None:
        self._last: tuple[float, float] | None = None
        self._rates: deque[float] = deque([0.0] * intervals, maxlen=intervals)

    def observe(self, now: float, total: float) -> None:
        if self._last is not None and now > self._last[0]:
            self._rates.append(max(0.0, total - self._last[1]) / (now - self._last[0]))
        self._last = (now, total)

    def per_s(self) -> float:
        return statistics.median(self._rates)


class ServiceRate:
    """Tokens per second one replica serves: measured over windows in which the pool had
    work waiting the whole time (an idle replica's rate says nothing of what it can do),
    smoothed, and the prior until the first such window."""

    def __init__(self, prior: float, smoothing: float = 0.3) -> None:
        self._estimate = prior
        self._smoothing = smoothing
        self.measured = False

    def observe(self, served_tokens: float, replica_seconds: float, saturated: bool) -> None:
        """`served_tokens` in `replica_seconds` of serving, with work waiting throughout
        (`saturated`) or not."""
        if not saturated or replica_seconds <= 0 or served_tokens <= 0:
            return
        rate = served_tokens / replica_seconds
        if not self.measured:
            self._estimate, self.measured = rate, True
        else:
            self._estimate += self._smoothing * (rate - self._estimate)

    def per_s(self) -> float:
        return self._estimate
