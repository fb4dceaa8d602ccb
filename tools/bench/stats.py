"""The figures of a benchmark run: per way of serving, and llmq's ratios to the baselines.

Throughput and latency are computed the way vLLM's serving benchmark computes them
(answered requests and their output tokens over the run's wall time; numpy percentiles,
linear interpolation), so the three ways compare like for like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np

from tools.bench.samples import Kind, WayResult
from tools.intervals import small_sample_interval

Summary = dict[str, float | int | None]
"""One way's figures by name; times in seconds, None where there is no data."""

LLMQ = "llmq"
GATEWAY = "gateway"
COMPARED = (LLMQ, GATEWAY)
"""llmq's ways: as a Kafka app, and through its HTTP front door."""
BASELINES = ("engine", "vllm-serve")
"""The ways llmq is compared with: the bare engine in-process, vLLM's OpenAI server."""
DUPLICATES = "llmq-duplicates"
"""The duplicate-heavy run's result (it runs through llmq)."""
CACHE_HITS = "llmq-cache-hits"
"""The exact-cache run's result (it runs through llmq)."""
INTERACTIVE_IDLE = "interactive-idle"
BATCH_LANE = "batch-lane"
INTERACTIVE_BUSY = "interactive-busy"
"""The lanes way's results: interactive requests on the idle stack, the workload on the
batch lane, and interactive requests behind it."""
PERCENTILES = (50, 90, 99)
RATIO_METRICS = ("req_per_s", "output_tok_per_s", "ttft_p50_s", "latency_p50_s")
"""Compared as llmq / baseline: above 1 is better for throughput, worse for latency."""


def summarize(result: WayResult) -> Summary:
    """Requests, throughput, TTFT / latency / pipeline-overhead percentiles, cache hits
    (also per kind of request) and what they saved, for one way.

    Latencies count answered requests only. The overhead (latency minus engine time) counts
    generated answers whose engine time the way reports; cache hits have their own latency.
    The cost saved is estimated at the run's mean metered cost per generation.
    """
    ok = [s for s in result.samples if s.ok]
    out: Summary = {
        "requests": len(result.samples),
        "ok": len(ok),
        "errors": len(result.samples) - len(ok),
        "wall_s": result.wall_s,
        "req_per_s": _per_s(len(ok), result.wall_s),
        "output_tok_per_s": _per_s(sum(s.output_tokens for s in ok), result.wall_s),
    }
    series = {
        "ttft": [s.ttft_s for s in ok if s.ttft_s is not None],
        "latency": [s.latency_s for s in ok],
        "overhead": [s.latency_s - s.engine_s for s in ok if s.engine_s is not None],
    }
    for name, values in series.items():
        for q in PERCENTILES:
            out[f"{name}_p{q}_s"] = _percentile(values, q)
    hits = [s for s in ok if s.cache != "none"]
    out["cache_hits"] = len(hits)
    out["hit_latency_p50_s"] = _percentile([s.latency_s for s in hits], 50)
    out["hit_latency_p99_s"] = _percentile([s.latency_s for s in hits], 99)
    for kind in get_args(Kind):
        out[f"{kind}_requests"] = sum(s.kind == kind for s in result.samples)
        out[f"{kind}_hits"] = sum(s.kind == kind for s in hits)
    generations, cost = result.generations, result.cost_usd
    saved = None if generations is None else len(result.samples) - generations
    out["generations"] = generations
    out["generations_saved"] = saved
    out["cost_usd"] = cost
    out["cost_saved_usd"] = (
        cost / generations * saved
        if cost is not None and saved is not None and generations
        else None
    )
    return out


def ratios(summaries: dict[str, Summary]) -> dict[str, float]:
    """Each of llmq's ways' figures over each baseline's, keyed "<way>/<baseline> <metric>";
    a ratio is left out when either way is missing or a figure is unknown or zero."""
    out: dict[str, float] = {}
    for way in COMPARED:
        mine = summaries.get(way)
        for base in BASELINES:
            theirs = summaries.get(base)
            if mine is None or theirs is None:
                continue
            for metric in RATIO_METRICS:
                a, b = mine.get(metric), theirs.get(metric)
                if a is not None and b:
                    out[f"{way}/{base} {metric}"] = a / b
    return out


THROUGHPUT_WAYS = (*BASELINES, *COMPARED)
"""The ways `llmq bench --repeat` runs again: those the ratios compare."""


@dataclass(frozen=True)
class Spread:
    """One ratio over the repetitions of a run: each one's value, their mean and its 95%
    interval."""

    values: list[float]
    mean: float
    low: float
    high: float


def repeated_ratios(repeats: Sequence[dict[str, Summary]]) -> dict[str, Spread]:
    """Each ratio of `ratios` over the repetitions (each its ways' summaries); a ratio missing
    from any repetition is left out (its values would not be paired)."""
    each = [ratios(summaries) for summaries in repeats]
    out = {}
    for key in each[0] if each else {}:
        values = [found[key] for found in each if key in found]
        if len(values) == len(each):
            low, high = small_sample_interval(values)
            out[key] = Spread(values, sum(values) / len(values), low, high)
    return out


def added_by_the_door(summaries: dict[str, Summary]) -> dict[str, float]:
    """What the front door adds to calling vLLM's server directly: gateway's TTFT and
    latency percentiles minus vllm-serve's, in seconds, keyed like the summaries."""
    door, server = summaries.get(GATEWAY), summaries.get("vllm-serve")
    if door is None or server is None:
        return {}
    out = {}
    for name in ("ttft", "latency"):
        for q in PERCENTILES:
            a, b = door.get(f"{name}_p{q}_s"), server.get(f"{name}_p{q}_s")
            if a is not None and b is not None:
                out[f"{name}_p{q}_s"] = a - b
    return out


def lanes(summaries: dict[str, Summary]) -> dict[str, float]:
    """What the batch lane's backlog did: interactive latency behind it over idle (p50 and
    p99), and the batch lane's throughput over the llmq way's on the standard lane (no
    interactive requests there); each left out when a figure is missing."""
    idle, busy = summaries.get(INTERACTIVE_IDLE), summaries.get(INTERACTIVE_BUSY)
    batch, alone = summaries.get(BATCH_LANE), summaries.get(LLMQ)
    pairs = {
        "interactive_p50_ratio": (busy, idle, "latency_p50_s"),
        "interactive_p99_ratio": (busy, idle, "latency_p99_s"),
        "batch_over_llmq_output_tok_per_s": (batch, alone, "output_tok_per_s"),
    }
    out = {}
    for name, (mine, theirs, metric) in pairs.items():
        a = None if mine is None else mine.get(metric)
        b = None if theirs is None else theirs.get(metric)
        if a is not None and b:
            out[name] = a / b
    return out


def _percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (numpy's linear interpolation), or None without values."""
    return float(np.percentile(values, q)) if values else None


def _per_s(count: float, wall_s: float) -> float | None:
    return count / wall_s if wall_s > 0 else None
