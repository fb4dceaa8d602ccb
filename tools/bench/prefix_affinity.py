"""Prefix affinity measured: vLLM's prefix-cache hit rate and the throughput of a pool of
workers on requests that share a few long documents, with work placed by prompt prefix
(LLMQ_PREFIX_AFFINITY_CHARS, the default) against placed by fingerprint (0), each in a
local stack of its own with the same workers and the same KV cache.

Each request is one of `--documents` ShareGPT first turns (cut to `--doc-chars`) followed
by a question of its own, all sent at once in an order that mixes the documents. When the
documents together outgrow one worker's KV cache but not the pool's, a worker that sees
only its share of them keeps them cached; one that sees all of them evicts and recomputes.

    python -m tools.bench.prefix_affinity [--documents 24] [--requests 192] [--record F]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from streams.affinity import DEFAULT_PREFIX_CHARS
from tools import sharegpt
from tools.bench.runner import machine, record_section
from tools.bench.samples import BenchRequest
from tools.bench.ways.queue import LlmqWay
from tools.faults.probe import metric
from tools.progress import Progress
from tools.stack.settings import LocalSettings

BEGIN = "<!-- prefix-affinity: begin (written by `python -m tools.bench.prefix_affinity`) -->"
END = "<!-- prefix-affinity: end -->"
AFFINITY_ENV = "LLMQ_PREFIX_AFFINITY_CHARS"
QUESTIONS = (
    "what is the text above about?",
    "who is the text above written for?",
    "what does the text above ask for?",
    "what is the tone of the text above?",
    "name one thing the text above leaves out.",
    "what would you answer first?",
    "what is the most important word in the text above?",
    "what should be asked back?",
)
MAX_TOKENS = 16
"""Tokens each answer may take: short, so that prefill is what the placements differ in."""
COUNTERS = {
    "queried": "vllm:prefix_cache_queries_total",
    "hit": "vllm:prefix_cache_hits_total",
    "prompt": "vllm:prompt_tokens_total",
    "generated": "vllm:generation_tokens_total",
}
"""vLLM's counters read from each worker, all in tokens."""


@dataclass(frozen=True)
class Worker:
    """What one worker's engine did during a run (tokens)."""

    queried: float
    hit: float
    prompt: float
    generated: float


@dataclass(frozen=True)
class Run:
    """One placement's run: requests answered, its wall time, and each worker's engine."""

    placement: str
    affinity_chars: int
    requests: int
    answered: int
    wall_s: float
    workers: list[Worker]
    errors: dict[str, int]
    """Requests answered with an error, by reason."""

    @property
    def hit_rate(self) -> float:
        """Prompt tokens found in the prefix caches, of those looked up, over the pool."""
        queried = sum(w.queried for w in self.workers)
        return sum(w.hit for w in self.workers) / queried if queried else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.answered / self.wall_s

    @property
    def spread(self) -> float:
        """The busiest worker's prompt tokens over the mean: 1.0 is an even pool."""
        loads = [w.prompt for w in self.workers]
        mean = sum(loads) / len(loads)
        return max(loads) / mean if mean else 0.0


def workload(documents: int, requests: int, doc_chars: int, cache_dir: Path) -> list[BenchRequest]:
    """`requests` prompts, each a document and a question of its own, in an order that mixes
    the documents; the same on every machine."""
    pool = [p.text for p in sharegpt.first_turns(cache_dir) if len(p.text) >= doc_chars]
    if len(pool) < documents:
        raise ValueError(
            f"{documents} documents asked; ShareGPT has {len(pool)} first turns of "
            f"{doc_chars} characters or more"
        )
    rng = random.Random("llmq-prefix-affinity")
    docs = [text[:doc_chars] for text in rng.sample(pool, documents)]
    if len({doc[:DEFAULT_PREFIX_CHARS] for doc in docs}) < documents:
        raise ValueError("two documents start alike; choose another --documents")
    order = [n % documents for n in range(requests)]
    rng.shuffle(order)
    return [
        BenchRequest(
            i,
            f"{docs[d]}\n\nRequest {i}: in one sentence, {QUESTIONS[i % len(QUESTIONS)]}",
            MAX_TOKENS,
            0.0,
        )
        for i, d in enumerate(order)
    ]


def _engines(endpoints: list[str]) -> list[dict[str, float]]:
    readings = []
    for endpoint in endpoints:
        values = {key: metric(endpoint, name) for key, name in COUNTERS.items()}
        missing = [COUNTERS[k] for k, v in values.items() if v is None]
        if missing:
            raise RuntimeError(f"worker {endpoint} did not answer for {missing}")
        readings.append({k: v or 0.0 for k, v in values.items()})
    return readings


def measure(
    placement: str, chars: int, requests: list[BenchRequest], args: argparse.Namespace
) -> Run:
    """One placement in a stack of its own: warmed, then the workload at once."""
    # The stack's processes inherit these (this process runs only the benchmark). The KV
    # cache goes by vLLM's own variable: the bench sets it for its engines, and where it is
    # set it wins over the stack's LLMQ_KV_CACHE_GIB.
    os.environ.update({AFFINITY_ENV: str(chars), "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib)})
    with LlmqWay(args.cache_dir, print, replicas=args.replicas) as stack:
        before = _engines(stack.workers)
        with Progress(total=len(requests), desc=placement, unit="req") as bar:
            result = stack.run(requests, lambda: bar.update(1), placement, stream=False)
        after = _engines(stack.workers)
    workers = [
        Worker(**{key: a[key] - b[key] for key in COUNTERS})
        for a, b in zip(after, before, strict=True)
    ]
    if not any(w.queried for w in workers):
        raise RuntimeError(f"no worker counted prefix-cache lookups ({COUNTERS['queried']})")
    answered = sum(s.ok for s in result.samples)
    errors = Counter(s.error or "no answer" for s in result.samples if not s.ok)
    return Run(placement, chars, len(requests), answered, result.wall_s, workers, dict(errors))


def section(runs: list[Run], args: argparse.Namespace) -> str:
    """The BENCHMARKS.md section."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    fingerprint, prefix = runs
    ratio = prefix.requests_per_s / fingerprint.requests_per_s
    rows = [
        f"| {r.placement} | {r.answered}/{r.requests} | {_errors(r)} | {r.wall_s:.0f} | "
        f"{r.requests_per_s:.2f} | {r.hit_rate:.1%} | "
        f"{sum(w.prompt for w in r.workers) / 1000:.0f}k | {r.spread:.2f} |"
        for r in runs
    ]
    return "\n".join(
        [
            "## Prefix affinity",
            "",
            f"Measured {when} on {machine()} with `python -m tools.bench.prefix_affinity "
            f"--documents {args.documents} --requests {args.requests} --doc-chars "
            f"{args.doc_chars} --replicas {args.replicas} --kv-cache-gib {args.kv_cache_gib}`: "
            f"{args.requests} requests, each one of {args.documents} ShareGPT first turns cut "
            f"to {args.doc_chars} characters and a question of its own, all sent at once, "
            f"served by {args.replicas} workers with a {args.kv_cache_gib} GiB KV cache each, "
            "in a stack of their own per placement. Hit rate: prompt tokens vLLM found in its "
            "prefix cache, of those it looked up, over the pool. Spread: the busiest worker's "
            "prompt tokens over the mean. Req/s counts the requests answered without an error.",
            "",
            "| work placed by | answered | errors | seconds | req/s | prefix-cache hit rate | "
            "prompt tokens | spread |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Placed by prefix, the pool served **{ratio:.2f}x** "
            f"the requests a second of placed by fingerprint, at a prefix-cache hit rate of "
            f"{prefix.hit_rate:.1%} against {fingerprint.hit_rate:.1%}.",
        ]
    )


def _errors(run: Run) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(run.errors.items())) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=24)
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--doc-chars", type=int, default=4000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--record", type=Path, help="replace the prefix-affinity section here")
    args = parser.parse_args()
    if args.doc_chars <= DEFAULT_PREFIX_CHARS:
        parser.error(f"--doc-chars must exceed the prefix ({DEFAULT_PREFIX_CHARS} characters)")
    if min(args.documents, args.replicas, args.kv_cache_gib) < 1:
        parser.error("--documents, --replicas and --kv-cache-gib must be at least 1")
    if args.requests < args.documents:
        parser.error("--requests must be at least --documents (each document asked once)")
    args.cache_dir = LocalSettings().cache_dir
    requests = workload(args.documents, args.requests, args.doc_chars, args.cache_dir)
    runs = [
        measure("fingerprint", 0, requests, args),
        measure("prefix", DEFAULT_PREFIX_CHARS, requests, args),
    ]
    text = section(runs, args)
    print(text)
    if args.out:
        figures = [{**asdict(r), "hit_rate": r.hit_rate, "spread": r.spread} for r in runs]
        args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if args.record:
        record_section(args.record, text, BEGIN, END)


if __name__ == "__main__":
    main()
