"""What one benchmark run records: a sample per request, a result per way of serving."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["fresh", "sharegpt_repeat", "exact_repeat", "paraphrase"]
"""Why a request is in the workload: a first turn, or a repeat of an earlier one."""


@dataclass(frozen=True)
class BenchRequest:
    """One request of the workload, the same for every way of serving it."""

    index: int
    prompt: str
    max_tokens: int
    arrival_s: float
    """When to send it, in seconds from the start of the run (0 for all at once)."""
    kind: Kind = "fresh"


@dataclass(frozen=True)
class Sample:
    """What happened to one request in one way of serving it."""

    index: int
    kind: Kind
    ok: bool
    sent_s: float
    """When it was sent, from the start of the run."""
    latency_s: float
    """From sending to the whole answer."""
    ttft_s: float | None
    """From sending to the first token (None where the way cannot see tokens arrive)."""
    engine_s: float | None
    """Time inside the engine, where the way reports it (llmq does: timings.engine_ms)."""
    prompt_tokens: int
    output_tokens: int
    cache: str = "none"
    """llmq's cache status of the answer ("none" for the other ways)."""
    error: str | None = None


@dataclass
class WayResult:
    """One way of serving the whole workload."""

    way: str
    """"engine" (AsyncLLM in-process), "vllm-serve" (OpenAI server over HTTP), "llmq", or
    "llmq-duplicates" (the duplicate-heavy run through llmq)."""
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    generations: int | None = None
    """Engine generations it took, where known (llmq: fewer than requests when caching)."""
    cost_usd: float | None = None
    """Metered cost, where known (llmq's metering)."""
    cores: dict[str, float] = field(default_factory=dict)
    """Cores each part of the machine kept busy during the run, by part (tools.bench.cpu)."""
