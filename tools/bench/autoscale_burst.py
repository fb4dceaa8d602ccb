"""The autoscaler's loop on this machine: a local stack whose pool may grow from 1 to N
workers, a burst of ShareGPT requests on the batch lane at once, and what happened.

    python -m tools.bench.autoscale_burst --requests 400 --max-replicas 3 --max-tokens 128

The burst's catalog is the built-in one with a generation timeout of 900 s instead of
300 s: three engines sharing two cores run 64 generations each, and some took longer than
300 s (cut off with engine_timeout); with fewer at once per engine (16), the two cores
served 2.4 times fewer tokens a second.

It samples the backlog, the pool and the answers every second until the pool is back at
its minimum, checks that every request was answered exactly once and generated once (by
metering) with none cut off, and writes a PNG of backlog, replicas and latency over time
and a JSON of every figure. On 2 CPU cores a second vLLM worker adds no throughput (the
cores are the limit): the run shows the loop, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from llmq.cli import exit_on_sigterm
from llmq.client import Client, connect
from schemas.catalog import Catalog
from schemas.kafka_security import KafkaSecurity
from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.names import METERING, TopicSpec
from schemas.request import CacheMode
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings
from tools import sharegpt
from tools.stack.ports import free_block
from tools.stack.settings import LocalSettings
from tools.stack.stack import LocalStack
from tools.topics import ensure_topics

WINDOWS = {
    "LLMQ_STABILIZATION_S": "60",
    "LLMQ_IDLE_S": "120",
    "LLMQ_DRAIN_BATCH_S": "60",
    "LLMQ_AUTOSCALER_TICK_S": "2",
}
"""The local stack's short windows: the loop shows within minutes."""
GENERATION_TIMEOUT_S = 900.0
"""The model's timeout_s in the burst's catalog (the built-in one's is 300 s)."""
PROGRESS_EVERY = 15
"""Seconds between progress lines."""
Say = Callable[[str], None]


@dataclass
class Sample:
    """One second of the run."""

    t: float
    backlog: int
    running: int
    """Worker processes, starting ones included."""
    serving: int
    """Workers in the group: engine loaded, taking work."""
    desired: int
    answered: int


@dataclass
class Burst:
    """What the run saw, and what it checked."""

    requests: int
    max_replicas: int
    samples: list[Sample] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    """(finished, seconds from send) per answer, finished counted from the burst."""
    errors: dict[str, int] = field(default_factory=dict)
    """Failed requests by error code."""
    replies: dict[str, int] = field(default_factory=dict)
    """Reply records per correlation id on the run's own reply topic."""
    generations: dict[str, int] = field(default_factory=dict)
    """Metering events per correlation id: generations of each request."""
    drained_s: float | None = None
    back_at_min_s: float | None = None
    decisions: list[str] = field(default_factory=list)
    """The autoscaler's log lines of its changes, each with its reason."""

    def most_replicas(self) -> int:
        return max((s.running for s in self.samples), default=0)

    def problems(self, ids: list[str]) -> list[str]:
        """What broke the promise: lost, doubled, generated twice, failed, never grew."""
        out = []
        lost = [c for c in ids if self.replies.get(c, 0) == 0]
        doubled = [c for c in ids if self.replies.get(c, 0) > 1]
        twice = [c for c in ids if self.generations.get(c, 0) > 1]
        never = [c for c in ids if self.generations.get(c, 0) == 0]
        if lost:
            out.append(f"{len(lost)} requests never answered")
        if doubled:
            out.append(f"{len(doubled)} requests answered more than once")
        if twice:
            out.append(f"{len(twice)} requests generated more than once")
        if never:
            out.append(f"{len(never)} requests without a metered generation")
        if self.errors:
            codes = ", ".join(f"{code} {n}" for code, n in sorted(self.errors.items()))
            out.append(f"{sum(self.errors.values())} requests failed ({codes})")
        if self.most_replicas() < 2:
            out.append("the pool never grew")
        if self.back_at_min_s is None:
            out.append("the pool did not come back to its minimum")
        return out


def run(
    requests: int,
    max_replicas: int,
    *,
    cache_dir: Path,
    max_tokens: int = 64,
    settle_s: float = 600.0,
    windows: dict[str, str] | None = None,
    say: Say = print,
) -> tuple[Burst, list[str]]:
    """The whole run; the burst's figures and its problems (none: the promise held).
    `windows` override the autoscaler's local windows (LLMQ_* variables)."""
    with tempfile.TemporaryDirectory(prefix="llmq-autoscale-") as state:
        env = {**WINDOWS, **(windows or {})}
        models = _catalog(Path(state) / "models.toml", GENERATION_TIMEOUT_S)
        stack = LocalStack(_settings(Path(state), cache_dir, max_replicas, env, models))
        try:
            stack.up(say=lambda line: say(f"stack: {line}"))
            burst, problems = _burst(
                stack,
                requests,
                max_replicas=max_replicas,
                max_tokens=max_tokens,
                settle_s=settle_s,
                say=say,
            )
            log = Path(state) / "run" / "autoscaler.log"
            burst.decisions = [
                line
                for line in log.read_text().splitlines()
                if " replicas: " in line and ": still " not in line
            ]
            return burst, problems
        finally:
            stack.down(say=lambda _: None)


def _catalog(path: Path, timeout_s: float) -> Path:
    """The built-in catalog with a generation timeout of `timeout_s`, as a file."""
    catalog = Catalog.builtin()
    lines = [f"default = {json.dumps(catalog.default)}"]
    for spec in catalog.models:
        values = {**spec.model_dump(mode="json", exclude_defaults=True), "timeout_s": timeout_s}
        lines += ["", "[[models]]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _settings(
    state: Path, cache_dir: Path, max_replicas: int, windows: dict[str, str], models: Path
) -> LocalSettings:
    # Kafka, its controller, Redis, streams, the first worker, the autoscaler, the further
    # workers, the front door.
    base = free_block(6 + max_replicas)
    return LocalSettings(
        state_dir=state,
        cache_dir=cache_dir,
        kafka_port=base,
        redis_port=base + 2,
        metrics_base_port=base + 3,
        api_port=base + 5 + max_replicas,
        models_file=models,
        tenants_file=None,
        autoscale=True,
        kv_cache_gib=1,  # three engines share 24 GiB here
        min_replicas=1,
        max_replicas=max_replicas,
        autoscaler_env=windows,
    )


def _burst(
    stack: LocalStack,
    n: int,
    *,
    max_replicas: int,
    max_tokens: int,
    settle_s: float,
    say: Say,
) -> tuple[Burst, list[str]]:
    local = stack.settings
    reply_to = f"bench.autoscale.{uuid.uuid4().hex[:8]}"
    ensure_topics(local.kafka_bootstrap, [TopicSpec(reply_to, 1)])
    prompts = sharegpt.sample(n, local.cache_dir, seed=0, max_tokens=max_tokens)
    burst = Burst(n, max_replicas)
    sampler = _Sampler(stack, burst, say)
    services = Client(_service(local), reply_to=reply_to, tenant=f"burst-{uuid.uuid4().hex[:6]}")
    with services as client:
        # 1) Everything at once, on the batch lane; no cache or coalescing: n generations.
        say(f"sending {n} ShareGPT requests at once on the batch lane")
        start = time.monotonic()
        sampler.start(start)
        ids = [
            client.submit(
                p.text,
                lane=Lane.BATCH,
                cache=CacheMode.OFF,
                max_tokens=p.reply_tokens,
                temperature=0.0,
            )
            for p in prompts
        ]
        sent = time.time()
        # 2) Every answer, as it comes.
        for cid in ids:
            result = client.result(cid, timeout=settle_s)
            _record(burst, result, sent)
        burst.drained_s = time.monotonic() - start
        say(f"all {n} answered in {burst.drained_s:.0f} s; waiting for the pool to shrink")
        # 3) The pool back at its minimum, after the down-scale window.
        burst.back_at_min_s = sampler.wait_back(local.min_replicas, settle_s)
    sampler.stop()
    burst.replies = _counts(local.kafka_bootstrap, reply_to, lambda r: r.key.decode())
    burst.generations = _generations(local.kafka_bootstrap, set(ids))
    return burst, burst.problems(ids)


def _record(burst: Burst, result: InferenceResult, sent: float) -> None:
    if result.status != "ok" or result.response is None:
        code = result.error.code.value if result.error is not None else result.status
        burst.errors[code] = burst.errors.get(code, 0) + 1
        return
    finished = result.finished_at or time.time()
    total = (result.timings.total_ms or 0.0) / 1000
    burst.latencies.append((finished - sent, total))


class _Sampler:
    """Once a second, in a thread: the backlog, the pool and the answers so far (said every
    PROGRESS_EVERY samples)."""

    def __init__(self, stack: LocalStack, burst: Burst, say: Say) -> None:
        self._stack = stack
        self._burst = burst
        self._say = say
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="burst-sampler", daemon=True)
        self._start = 0.0

    def start(self, start: float) -> None:
        self._start = start
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def wait_back(self, minimum: int, timeout_s: float) -> float | None:
        """Seconds from the burst until the pool ran `minimum` workers again, desired too."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = self._burst.samples[-1] if self._burst.samples else None
            if last is not None and last.running == minimum and last.desired == minimum:
                return last.t
            time.sleep(1)
        return None

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            backlog = self._stack.backlog()
            if not backlog:
                continue  # the autoscaler did not answer (starved of CPU): no figure, not 0
            pools = self._stack.pools()
            running = sum(r for r, _ in pools.values())
            desired = sum(d or 0 for _, d in pools.values())
            sample = Sample(
                time.monotonic() - self._start,
                int(sum(backlog.values())),
                running,
                int(sum(self._stack.in_groups().values())),
                desired,
                len(self._burst.latencies),
            )
            self._burst.samples.append(sample)
            if len(self._burst.samples) % PROGRESS_EVERY == 0:
                self._say(
                    f"  {sample.t:4.0f} s: {sample.answered}/{self._burst.requests} answered, "
                    f"backlog {sample.backlog}, workers {sample.running} running, "
                    f"{sample.desired} desired"
                )


def _service(local: LocalSettings) -> ServiceSettings:
    return ServiceSettings(kafka_bootstrap=local.kafka_bootstrap, redis_url=local.redis_url)


def _consumer(bootstrap: str, topic: str) -> KafkaConsumer:
    consumer = connect(
        KafkaConsumer,
        bootstrap,
        KafkaSecurity(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    consumer.subscribe([topic])
    return consumer


def _counts(bootstrap: str, topic: str, key: Callable[[Any], str | None]) -> dict[str, int]:
    """Records per key on `topic` (None: not counted), from its beginning until it stays
    quiet for 5 s."""
    consumer = _consumer(bootstrap, topic)
    try:
        return dict(Counter(k for record in consumer if (k := key(record)) is not None))
    finally:
        consumer.close()


def _generations(bootstrap: str, ids: set[str]) -> dict[str, int]:
    """Engine generations (their metering events) per correlation id of this run."""
    events = _counts(bootstrap, METERING, lambda r: _generated(r.value))
    return {cid: n for cid, n in events.items() if cid in ids}


def _generated(value: bytes) -> str | None:
    """The correlation id of a generation's metering event; None for a saving's."""
    event = MeteringEvent.model_validate_json(value)
    return event.correlation_id if event.generated else None


def plot(burst: Burst, path: Path) -> Path:
    """Backlog, workers (running and desired) and answers' latency p50/p99 over time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 -- bench only
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(10, 7), layout="constrained")
    top, middle, bottom = fig.subplots(3, 1, sharex=True)
    ts = [s.t for s in burst.samples]
    top.plot(ts, [s.backlog for s in burst.samples], label="backlog (records)")
    top.set_ylabel("records waiting")
    top.set_title(f"{burst.requests} ShareGPT requests at once on the batch lane")
    middle.step(ts, [s.desired for s in burst.samples], where="post", label="desired")
    middle.step(ts, [s.running for s in burst.samples], where="post", label="running")
    middle.step(
        ts, [s.serving for s in burst.samples], where="post", label="serving (in the group)"
    )
    middle.set_ylabel("workers")
    middle.set_ylim(0, burst.max_replicas + 0.5)
    middle.legend(loc="upper right")
    windows = _latency_windows(burst.latencies, 15.0)
    bottom.plot([w for w, _, _ in windows], [p50 for _, p50, _ in windows], label="p50")
    bottom.plot([w for w, _, _ in windows], [p99 for _, _, p99 in windows], label="p99")
    bottom.set_ylabel("latency, s")
    bottom.set_xlabel("seconds since the burst")
    bottom.legend(loc="upper left")
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def _latency_windows(
    latencies: list[tuple[float, float]], width_s: float
) -> list[tuple[float, float, float]]:
    """(window end, p50, p99) of the answers that finished in each window."""
    out = []
    end = width_s
    last = max((t for t, _ in latencies), default=0.0)
    while end <= last + width_s:
        inside = sorted(v for t, v in latencies if end - width_s <= t < end)
        if inside:
            p99 = inside[min(len(inside) - 1, int(0.99 * len(inside)))]
            out.append((end, statistics.median(inside), p99))
        end += width_s
    return out


def summary(burst: Burst) -> str:
    """The figures in Markdown."""
    values = sorted(v for _, v in burst.latencies)
    p50 = statistics.median(values) if values else float("nan")
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))] if values else float("nan")
    answered = sum(1 for n in burst.replies.values() if n >= 1)
    return "\n".join(
        [
            "| requests | answered | answered twice | generated twice | failed | most workers "
            "| all answered after s | back at the minimum after s | latency p50 / p99 s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {burst.requests} | {answered} | {sum(n > 1 for n in burst.replies.values())} "
            f"| {sum(n > 1 for n in burst.generations.values())} | {sum(burst.errors.values())} "
            f"| {burst.most_replicas()} | {burst.drained_s or 0:.0f} "
            f"| {burst.back_at_min_s or 0:.0f} | {p50:.1f} / {p99:.1f} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the burst, print its figures, write its JSON and PNG; 1 if a promise broke."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--max-replicas", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    exit_on_sigterm()  # the stack it started goes down with it
    burst, problems = run(
        args.requests,
        args.max_replicas,
        cache_dir=LocalSettings().cache_dir,
        max_tokens=args.max_tokens,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autoscale-burst.json").write_text(json.dumps(asdict(burst), indent=1))
    print(summary(burst))
    print("\n".join(burst.decisions))
    print(f"plot: {plot(burst, args.out / 'autoscale-burst.png')}")
    for problem in problems:
        print(f"problem: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
