"""Rates the policy reads: how fast work arrives, and how fast one replica serves it."""

from __future__ import annotations

import statistics
from collections import deque


class ArrivalRate:
    """Tokens per second arriving, from a growing total seen at each tick: the lower median
    of the last intervals' rates, so one burst (which the backlog term already counts) does
    not pass for a lasting rate, while a rate that lasts shows within half the window.
    Before a whole window was seen, the median of the intervals seen: a restarted autoscaler
    sees a steady rate after one interval, not half a window of zeros later. An interval
    spans ticks until it is `min_interval_s` long: at a short tick, sparse arrivals (a
    record every two seconds, ticks every one) would otherwise leave most intervals empty
    and the median at zero."""

    def __init__(self, intervals: int = 12, min_interval_s: float = 5.0) -> None:
        self._min_interval_s = min_interval_s
        self._last: tuple[float, float] | None = None
        self._rates: deque[float] = deque(maxlen=intervals)

    def observe(self, now: float, total: float) -> None:
        if self._last is None:
            self._last = (now, total)
            return
        if now - self._last[0] >= self._min_interval_s:
            self._rates.append(max(0.0, total - self._last[1]) / (now - self._last[0]))
            self._last = (now, total)

    def per_s(self) -> float:
        return statistics.median_low(self._rates) if self._rates else 0.0


class ServiceRate:
    """Tokens per second one replica serves: the tokens committed over the replica-seconds
    of the latest `window_s` of serving with work waiting throughout (an idle replica's
    rate says nothing of what it can do), and the prior until such serving spans `min_s`
    and turned over the pool's engines once (`turnover` records committed).

    A ratio of sums over a long window, not a smoothed rate per tick: generations started
    together finish together, so commits come in lumps minutes apart, and a tick between
    two lumps would pass for a replica that serves almost nothing. For the same reason it
    is no rate until it spans `min_s` of serving: a lump a few seconds after a pool reached
    this size would pass for a replica that serves many times what it does.

    The serving before the first commit since the pool reached this size is not counted:
    its generations began with the pool, and on a slow engine their first lump comes
    minutes later, so those minutes would pass for a replica that serves nothing.

    Nor is it a rate before `turnover` records committed: as many as the pool's engines
    hold at once. Until then a few short records finish beside a lump of long generations
    still running, and minutes of them passed for a replica serving 0 tok/s (CI,
    2026-12-01: the autoscaler started and stopped a second worker four times, each
    change a rebalance that handed back the other's 48 unfinished generations)."""

    def __init__(
        self, prior: float, window_s: float = 600.0, min_s: float = 120.0, turnover: int = 1
    ) -> None:
        self._prior = prior
        self._window_s = window_s
        self._min_s = min_s
        self._turnover = turnover
        self._seen: deque[tuple[float, int, float]] = deque()
        """(tokens, records, replica-seconds) of each saturated interval, oldest first."""
        self._before_first = True
        """No commit yet since the pool reached this size."""

    def resume(self) -> None:
        """The pool is at this size again: wait for its first commit before counting."""
        self._before_first = True

    def observe(
        self, served_tokens: float, served_records: int, replica_seconds: float, saturated: bool
    ) -> None:
        """`served_tokens` of `served_records` in `replica_seconds` of serving, with work
        waiting throughout (`saturated`) or not."""
        if not saturated or replica_seconds <= 0:
            return
        if self._before_first and served_tokens <= 0:
            return
        self._before_first = False
        self._seen.append((max(0.0, served_tokens), max(0, served_records), replica_seconds))
        while sum(r for *_, r in self._seen) - self._seen[0][2] >= self._window_s:
            self._seen.popleft()

    @property
    def measured(self) -> bool:
        """Whether at least `min_s` of saturated serving committed `turnover` records and
        any tokens."""
        spans = sum(seconds for *_, seconds in self._seen) >= self._min_s
        turned = sum(records for _, records, _ in self._seen) >= self._turnover
        return spans and turned and any(tokens > 0 for tokens, *_ in self._seen)

    def per_s(self) -> float:
        if not self.measured:
            return self._prior
        return sum(t for t, *_ in self._seen) / sum(r for *_, r in self._seen)


class PoolRates:
    """The service rate measured at each pool size. A replica's rate depends on the size
    where replicas share something (two engines on two CPU cores serve less than one), so
    a smaller pool's capacity is what was measured at that size, not a guess from this one.
    `in_flight` is how many records one replica's engine holds at once (the model's
    max_inflight): a size's rate counts once its replicas committed that many each."""

    def __init__(
        self, prior: float, window_s: float = 600.0, min_s: float = 120.0, in_flight: int = 1
    ) -> None:
        self._prior = prior
        self._window_s = window_s
        self._min_s = min_s
        self._in_flight = in_flight
        self._by_size: dict[int, ServiceRate] = {}
        self._size = 0

    def observe(
        self, served_tokens: float, served_records: int, seconds: float, size: int, saturated: bool
    ) -> None:
        """`served_tokens` of `served_records` in `seconds` by a pool of `size` replicas
        throughout."""
        if size > 0:
            rate = self._by_size.setdefault(
                size, ServiceRate(self._prior, self._window_s, self._min_s, size * self._in_flight)
            )
            if size != self._size:
                rate.resume()
            rate.observe(served_tokens, served_records, size * seconds, saturated)
        self._size = size

    def per_replica(self, size: int) -> float:
        """One replica's rate in a pool of `size`: measured there, else at the nearest size
        measured (the smaller of two as near), else the prior."""
        measured = sorted(self.capacity(), key=lambda n: (abs(n - size), n))
        return self._by_size[measured[0]].per_s() if measured else self._prior

    def capacity(self) -> dict[int, float]:
        """Tokens per second of the whole pool, at each size measured."""
        return {n: n * r.per_s() for n, r in self._by_size.items() if r.measured}
