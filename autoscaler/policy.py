"""How many replicas a model's worker pool needs: pure, stateful only across its own ticks,
and with a reason for every figure it gives."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.lanes import Lane


@dataclass(frozen=True)
class Targets:
    """What the pool must achieve, and the bounds it moves within."""

    drain_s: Mapping[Lane, float]
    """Each lane's waiting work should be done within this long (interactive least)."""
    min_replicas: int = 1
    """Never fewer; 0 lets an idle pool go to zero."""
    max_replicas: int = 2
    stabilization_s: float = 60.0
    """A smaller figure takes effect only once every figure of this window was smaller:
    up at once, down after a while, no flapping."""
    idle_s: float = 120.0
    """With min_replicas 0: how long without work before the last replica goes."""
    headroom: float = 0.2
    """Fewer replicas than the present figure only if they would have this share spare:
    work that hovers at a boundary (0.95 of one replica, then 1.05) does not flip the
    pool down and up again."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if any(t <= 0 for t in self.drain_s.values()) or set(self.drain_s) != set(Lane):
            raise ValueError("every lane needs a positive drain time")


@dataclass(frozen=True)
class Observation:
    """What the autoscaler saw of one model at one moment."""

    now: float
    backlog_tokens: Mapping[Lane, float]
    """Estimated tokens (prompt + max_tokens) of the work waiting in each lane's topic, no
    worker's generation begun: what more replicas drain. Not the work running (replicas
    cannot shorten a generation; the arrivals count it), nor what is done behind a long
    generation whose commit it holds."""
    backlog_records: int
    """The records waiting (as `backlog_tokens`)."""
    arrival_tokens_per_s: float
    """How fast new work comes, lately."""
    tokens_per_s: float
    """What one replica serves: measured while the pool was busy, else a prior."""
    running: int
    """Replicas in the pool now: a policy's first figure holds at least these for its
    stabilization window."""
    partitions: int
    """Partitions of the model's largest lane topic: a lane is consumed by at most that
    many replicas, so more would sit idle."""
    capacity: Mapping[int, float] = field(default_factory=dict)
    """Tokens per second of the whole pool at each size where it was measured busy."""
    group_gone: bool = False
    """The workers' consumer group does not exist (Kafka's Dead: no members, no offsets;
    a model no worker served yet, or its offsets expired): the front door refuses the
    model, so no work comes to bring a worker back, and only a worker makes it again."""
    in_flight_records: int = 0
    """Records the workers run: not in the drain term, but a pool running any is not idle."""
    holding: int = 0
    """The fewest replicas whose engines could hold the records running (in_flight_records
    over the model's max_inflight, rounded up): the pool goes no lower. A scale-down may
    still abort the generations of the replicas it removes (which go is KEDA's choice)."""


@dataclass(frozen=True)
class Decision:
    """The replica count to run, and why."""

    desired: int
    needed: float
    """Replicas the work needs, before rounding and bounds."""
    target: int
    """The size after rounding, headroom and bounds, before the down-scale window (below
    `desired` while the window holds the pool up)."""
    reason: str


@dataclass
class Policy:
    """The pool size for each observation: enough replicas to drain every lane's backlog
    within its target while keeping up with arrivals, at the measured rate per replica, or
    the smallest pool measured to keep up; within [min, max] and the partitions; up at once,
    down only after the stabilization window (which starts out holding the pool's present
    size); to zero after idle_s without work (when min is 0; at once for a pool it first
    sees at zero with nothing to do), back from zero on the first record; and at least one
    replica while the pool's group is gone, as no record can wake it then; never below the
    fewest replicas whose engines could hold the generations running."""

    targets: Targets
    _window: deque[tuple[float, int]] = field(default_factory=deque)
    _idle_since: float | None = None
    _desired: int | None = None

    def decide(self, seen: Observation) -> Decision:
        # 1) The work: each lane's backlog over its drain target, plus the arrivals.
        drain = {
            lane: seen.backlog_tokens.get(lane, 0.0) / self.targets.drain_s[lane] for lane in Lane
        }
        rate = max(seen.tokens_per_s, 1e-9)
        work = sum(drain.values()) + seen.arrival_tokens_per_s
        needed = work / rate
        raw = math.ceil(needed - 1e-9)
        # Down only with headroom: the smaller figure must hold the work with some spare.
        spare = 1 + self.targets.headroom
        if self._desired is not None and raw < self._desired:
            raw = min(self._desired, math.ceil(needed * spare - 1e-9))
        # A smaller pool measured to keep up (with headroom) is enough, whatever this size's
        # rate says.
        kept_up = sorted(
            n for n, tokens in seen.capacity.items() if 0 < n < raw and tokens >= work * spare
        )
        if kept_up:
            raw = kept_up[0]
        # 2) Anything waiting or running needs a replica; nothing for idle_s needs none.
        busy = (
            seen.backlog_records > 0 or seen.in_flight_records > 0 or seen.arrival_tokens_per_s > 0
        )
        floor = self._floor(busy, seen.group_gone, seen.now, seen.running)
        if busy:
            raw = max(raw, 1, seen.holding)
        cap = min(self.targets.max_replicas, max(1, seen.partitions))
        target = min(max(raw, floor), cap)
        # 3) Up at once, down only when the whole window agrees. A policy that never saw
        # this pool (the autoscaler restarted) has no window yet: the pool's present size
        # stands in for it, or a busy pool would shrink before its rates were measured.
        if self._desired is None:
            self._window.append((seen.now, min(seen.running, cap)))
        self._window.append((seen.now, target))
        horizon = seen.now - self.targets.stabilization_s
        while self._window and self._window[0][0] < horizon:
            self._window.popleft()
        desired = max(n for _, n in self._window)
        self._desired = desired
        why = self._reason(seen, needed=needed, fits=raw, floor=floor, cap=cap, desired=desired)
        return Decision(desired, needed, target, why)

    def _floor(self, busy: bool, gone: bool, now: float, running: int) -> int:
        # A busy pool is not idle, nor one whose group is gone: the front door refuses its
        # model, so only a worker makes the group again; idle time starts once it is back.
        if busy or gone:
            self._idle_since = None
        elif self._idle_since is None:
            # A pool a new policy finds at zero with nothing to do was idle already: a
            # restarted autoscaler must not wake it for idle_s.
            found_idle = self._desired is None and running == 0
            self._idle_since = now - self.targets.idle_s if found_idle else now
        if self.targets.min_replicas > 0:
            return self.targets.min_replicas
        idle = self._idle_since is not None and now - self._idle_since >= self.targets.idle_s
        return 0 if idle else 1

    def _reason(
        self, seen: Observation, *, needed: float, fits: int, floor: int, cap: int, desired: int
    ) -> str:
        lanes = ", ".join(
            f"{lane.value} {seen.backlog_tokens.get(lane, 0.0):.0f} tok in "
            f"{self.targets.drain_s[lane]:g}s"
            for lane in Lane
            if seen.backlog_tokens.get(lane, 0.0) > 0
        )
        work = lanes or "no backlog"
        running = f", {seen.in_flight_records} running" if seen.in_flight_records else ""
        why = (
            f"{work} ({seen.backlog_records} records waiting{running}) and "
            f"{seen.arrival_tokens_per_s:.0f} tok/s arriving need {needed:.2f} replicas at "
            f"{seen.tokens_per_s:.0f} tok/s each"
        )
        if fits < math.ceil(needed - 1e-9):
            why += f"; {fits} measured at {seen.capacity[fits]:.0f} tok/s keep up"
        if fits > max(math.ceil(needed - 1e-9), 1):
            why += f"; fewer would have less than {self.targets.headroom:.0%} to spare"
        if desired > fits and desired == floor:
            why += f"; the floor is {floor}"
            if seen.group_gone and self.targets.min_replicas == 0:
                why += ": its group is gone, and only a worker makes it again"
        if fits > cap:
            why += f"; capped at {cap} (max_replicas, partitions)"
        if desired > min(max(fits, floor), cap):
            why += f"; held at {desired} by the {self.targets.stabilization_s:g}s down-scale window"
        return f"{desired} replicas: {why}"
