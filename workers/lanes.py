"""Which fetched record a worker starts next: higher lanes first, lower lanes never starved.

Records wait here between their fetch and their start, one bounded FIFO per lane, so the
worker can choose by lane instead of by arrival. A full lane stops being fetched (its backlog
stays in Kafka) until its buffer has drained to half. Three rules shape the choice:

- Headroom: while a higher lane has work, or had some within `hold_s`, a lane may start a
  generation only while the engine holds fewer than its cap (standard and batch: a fraction
  of `max_inflight`), so a batch backlog does not fill the engine and an interactive request
  enters vLLM at once, where the priority scheduler serves it ahead of the batch work. The
  headroom is work-conserving: with no higher-lane work for `hold_s`, a lane may fill the
  engine, and the first higher-lane request after that waits for one generation to end.
- Yielding: vLLM advances every running sequence by one token per step, and a step slows
  with every sequence and prompt in it, so priority alone cannot make an interactive answer
  fast. While a higher lane has work here, or had some within `yield_hold_s`, a lower lane
  starts new ones only while it holds fewer than `yield_cap` of `max_inflight`, so its part
  of every step shrinks to that as its generations finish. The hold keeps the lower lane
  from refilling the engine in the moment between one interactive answer and the next
  request.
- Minimum share: while a lower lane has work, it earns `min_share` of a start with every
  start; a lane owed a whole start gets the next one (bounded only by `max_inflight`), so a
  steady stream of higher-lane requests cannot starve it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from schemas.lanes import Lane

TP = TypeVar("TP", bound=Hashable)
R = TypeVar("R")

MAX_MIN_SHARE = 0.3
"""With both lower lanes owed this much, interactive still gets 40% of the starts."""
_OWED = 1.0 - 1e-9
"""Credit that makes a whole start (less float rounding: ten shares of 0.1 must do)."""
_MAX_CREDIT = 2.0
"""An owed lane keeps earning while a higher owed lane takes its turn, but never hoards."""


@dataclass(frozen=True)
class LanePolicy:
    """How a worker shares its engine between lanes (WorkerSettings documents the env vars)."""

    min_share: float = 0.1
    """Share of starts each lower lane with work is guaranteed, in [0, 0.3]; 0: strict order."""
    standard_cap: float = 0.9
    """Standard starts only while the engine holds fewer than this fraction of max_inflight."""
    batch_cap: float = 0.75
    """Batch starts only while the engine holds fewer than this fraction of max_inflight."""
    yield_cap: float = 0.1
    """While a higher lane runs, a lower lane starts only below this fraction of max_inflight."""
    buffer: int = 32
    """Records per lane fetched ahead of their start."""
    hold_s: float = 60.0
    """A lower lane keeps to its cap while a higher lane has work and this long after; then
    it may fill the engine."""
    yield_hold_s: float = 5.0
    """A lower lane keeps to yield_cap while a higher lane has work and this long after."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_share <= MAX_MIN_SHARE:
            raise ValueError(f"min_share must be in [0, {MAX_MIN_SHARE}], got {self.min_share}")
        if not 0.0 < self.batch_cap <= self.standard_cap <= 1.0:
            raise ValueError(
                f"caps must satisfy 0 < batch_cap <= standard_cap <= 1, "
                f"got batch_cap={self.batch_cap}, standard_cap={self.standard_cap}"
            )
        if not 0.0 < self.yield_cap <= 1.0:
            raise ValueError(f"yield_cap must be in (0, 1], got {self.yield_cap}")
        if self.buffer < 1:
            raise ValueError(f"buffer must be at least 1, got {self.buffer}")
        if self.hold_s < 0 or self.yield_hold_s < 0:
            raise ValueError(
                f"hold_s and yield_hold_s must not be negative, got {self.hold_s}, "
                f"{self.yield_hold_s}"
            )

    def cap(self, lane: Lane, max_inflight: int) -> int:
        """Generations the engine may hold when `lane` starts one more (at least 1)."""
        fraction = {
            Lane.INTERACTIVE: 1.0,
            Lane.STANDARD: self.standard_cap,
            Lane.BATCH: self.batch_cap,
        }[lane]
        return _share(fraction, max_inflight)

    def yielding_cap(self, max_inflight: int) -> int:
        """Generations a lower lane may hold when it starts one more while a higher one runs."""
        return _share(self.yield_cap, max_inflight)


def _share(fraction: float, max_inflight: int) -> int:
    """A fraction of the engine's slots, never below one so that every lane can progress."""
    return max(1, int(fraction * max_inflight))


def lane_of(topic: str) -> Lane:
    """The lane is the last part of a work topic's name."""
    return Lane(topic.rsplit(".", 1)[1])


class LaneScheduler(Generic[TP, R]):
    """Per-lane FIFO buffers of fetched, not yet started records, and the choice among them.

    Pure: the worker pushes what it fetched, pauses the partitions of lanes not `fetchable()`,
    starts what `pop()` returns while it returns something, and reports each generation that
    ends with `finished()`, so the scheduler knows how many of each lane the engine holds.
    """

    def __init__(
        self,
        policy: LanePolicy,
        max_inflight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._max_inflight = max_inflight
        self._caps = {lane: policy.cap(lane, max_inflight) for lane in Lane}
        self._yielding_cap = policy.yielding_cap(max_inflight)
        self._queues: dict[Lane, deque[tuple[TP, R]]] = {lane: deque() for lane in Lane}
        self._running = dict.fromkeys(Lane, 0)
        self._credit = dict.fromkeys(Lane, 0.0)
        self._open = dict.fromkeys(Lane, True)
        self._last_seen: dict[Lane, float] = {}
        """When each lane last had a record fetched or a generation running."""

    def push(self, lane: Lane, tp: TP, record: R) -> None:
        """Buffer a fetched record; a full lane closes to fetching."""
        queue = self._queues[lane]
        queue.append((tp, record))
        self._last_seen[lane] = self._clock()
        if len(queue) >= self._policy.buffer:
            self._open[lane] = False

    def fetchable(self) -> set[Lane]:
        """Lanes whose partitions may be fetched: not yet full, or drained to half since."""
        return {lane for lane in Lane if self._open[lane]}

    def room(self) -> int:
        """The most records one fetch may return without overfilling any fetchable lane."""
        return min(
            (self._policy.buffer - len(self._queues[lane]) for lane in self.fetchable()),
            default=0,
        )

    def buffered(self, lane: Lane) -> int:
        """Records of `lane` waiting to start."""
        return len(self._queues[lane])

    def running(self, lane: Lane) -> int:
        """Generations of `lane` started and not yet finished."""
        return self._running[lane]

    def pop(self) -> tuple[Lane, TP, R] | None:
        """The record to start next, counted as running from now; None: wait for a change."""
        waiting = [lane for lane in Lane if self._queues[lane]]
        if not waiting or sum(self._running.values()) >= self._max_inflight:
            return None
        # A lower lane owed a start takes it; otherwise the highest lane that may start.
        owed = [lane for lane in waiting[1:] if self._credit[lane] >= _OWED]
        allowed = [lane for lane in waiting if self._may_start(lane)]
        if owed:
            lane = owed[0]
        elif allowed:
            lane = allowed[0]
        else:
            return None
        self._credit[lane] = max(0.0, self._credit[lane] - 1.0)
        for other in waiting[1:]:
            self._credit[other] = min(_MAX_CREDIT, self._credit[other] + self._policy.min_share)
        tp, record = self._queues[lane].popleft()
        self._settle(lane)
        self._running[lane] += 1
        return lane, tp, record

    def finished(self, lane: Lane) -> None:
        """A generation that `pop()` returned has ended, however it ended."""
        self._running[lane] -= 1
        self._last_seen[lane] = self._clock()

    def drop(self, tps: Collection[TP]) -> int:
        """Forget the buffered records of revoked partitions; returns how many."""
        dropped = 0
        for lane, queue in self._queues.items():
            kept = deque(item for item in queue if item[0] not in tps)
            dropped += len(queue) - len(kept)
            self._queues[lane] = kept
            self._settle(lane)
        return dropped

    def _may_start(self, lane: Lane) -> bool:
        """Under the lane's headroom cap while a higher lane has or lately had work (hold_s),
        and under the yielding cap while it has or had it within yield_hold_s."""
        higher = [h for h in Lane if h.priority < lane.priority]
        if sum(self._running.values()) >= self._caps[lane] and any(
            self._held(h, self._policy.hold_s) for h in higher
        ):
            return False
        yielding = any(self._held(h, self._policy.yield_hold_s) for h in higher)
        return not yielding or self._running[lane] < self._yielding_cap

    def _held(self, lane: Lane, within_s: float) -> bool:
        """Whether `lane` has work here, or had some within the last `within_s`."""
        if self._queues[lane] or self._running[lane]:
            return True
        seen = self._last_seen.get(lane)
        return seen is not None and self._clock() - seen < within_s

    def _settle(self, lane: Lane) -> None:
        """After records left `lane`: reopen it at half full; an empty lane is owed nothing."""
        size = len(self._queues[lane])
        if size <= self._policy.buffer // 2:
            self._open[lane] = True
        if not size:
            self._credit[lane] = 0.0
