"""The worker's settings (LLMQ_* environment variables)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from schemas.catalog import ModelSpec
from schemas.settings import ServiceSettings
from workers.lanes import MAX_MIN_SHARE, LanePolicy
from workers.starts import DEFAULT_MAX_STARTS
from workers.tokens import DeltaPolicy


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(ServiceSettings):
    """One worker serves one model of the catalog."""

    model: str | None = None
    """The catalog model to serve (LLMQ_MODEL); the catalog default when unset."""
    worker_id: str = Field(default_factory=_default_worker_id, min_length=1)
    """Names this worker in completions and metering (LLMQ_WORKER_ID)."""
    cache_dir: Path = Path.home() / ".cache" / "llmq"
    """Prepared checkpoints are kept under its models/ (LLMQ_CACHE_DIR)."""
    kv_cache_gib: int = Field(default=2, ge=1, le=1024)
    """KV-cache memory of the CPU engine in GiB (sets VLLM_CPU_KVCACHE_SPACE if unset)."""
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    """Share of GPU memory the GPU engine may take (LLMQ_GPU_MEMORY_UTILIZATION)."""
    engine_nice: int = Field(default=10, ge=0, le=19)
    """How much nicer than the worker the CPU engine's processes run, so that the worker's
    loop (vLLM's front end) gets a core when it wakes, and the niceness of the worker's
    session group where it leads its session, so that other services go before it
    (workers/nice.py); 0 leaves both (LLMQ_ENGINE_NICE). A GPU engine is left alone: its
    CPU work feeds the GPU."""
    commit_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often finished offsets are committed (LLMQ_COMMIT_INTERVAL_S)."""
    drain_timeout_s: float = Field(default=30.0, ge=0, le=3600)
    """On SIGTERM: how long in-flight requests may run before they are handed back."""
    max_starts: int = Field(default=DEFAULT_MAX_STARTS, ge=2, le=100)
    """Starts a work record may have without an outcome (each a dead worker) before it is
    dead-lettered and answered with error crash_loop (LLMQ_MAX_STARTS, at least 2). The last
    of them runs alone in the engine, so a bystander of the crashes is never blamed."""
    lane_min_share: float = Field(default=0.1, ge=0, le=MAX_MIN_SHARE)
    """Share of starts each lower lane with work is guaranteed, so a steady stream of
    higher-lane requests cannot starve it; 0 serves lanes in strict order, at most 0.3
    (LLMQ_LANE_MIN_SHARE)."""
    lane_standard_cap: float = Field(default=0.9, gt=0, le=1)
    """Standard requests start only while the engine holds fewer than this fraction of the
    model's max_inflight: the rest is headroom for interactive ones (LLMQ_LANE_STANDARD_CAP)."""
    lane_batch_cap: float = Field(default=0.75, gt=0, le=1)
    """Batch requests start only while the engine holds fewer than this fraction of
    max_inflight; at most the standard cap (LLMQ_LANE_BATCH_CAP)."""
    lane_yield_cap: float = Field(default=0.1, gt=0, le=1)
    """While a higher lane has work (or had within LLMQ_LANE_YIELD_HOLD_S), a lower lane starts
    new requests only while it holds fewer than this fraction of max_inflight, so its prompts
    do not slow the higher lane's answers (LLMQ_LANE_YIELD_CAP; BENCHMARKS.md has the trade)."""
    lane_yield_hold_s: float = Field(default=5.0, ge=0, le=3600)
    """A lower lane keeps to the yield cap this long after a higher lane's last work, so it
    does not refill the engine between one interactive answer and the next request
    (LLMQ_LANE_YIELD_HOLD_S)."""
    lane_hold_s: float = Field(default=60.0, ge=0, le=3600)
    """The lane caps hold while a higher lane has work and this long after; with no
    higher-lane work for that long, a lane may fill the engine (LLMQ_LANE_HOLD_S)."""
    lane_buffer: int = Field(default=32, ge=1, le=100_000)
    """Records per lane fetched ahead of their start; a full lane is paused, its backlog
    stays in Kafka (LLMQ_LANE_BUFFER)."""
    stream_interval_ms: float = Field(default=40.0, gt=0, le=5000)
    """A streamed answer goes out at most this long after its previous piece while tokens
    come (LLMQ_STREAM_INTERVAL_MS)."""
    stream_max_tokens: int = Field(default=16, ge=1, le=4096)
    """At most this many tokens in one piece of a streamed answer (LLMQ_STREAM_MAX_TOKENS)."""
    cancel_memory_s: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    """How long a cancellation is remembered, so work still queued is skipped when it comes
    (LLMQ_CANCEL_MEMORY_S)."""
    vllm_cpu_kvcache_space: int | None = Field(
        default=None, ge=1, validation_alias="VLLM_CPU_KVCACHE_SPACE"
    )
    """vLLM's own variable, when set: it wins over kv_cache_gib."""
    vllm_cpu_num_of_reserved_cpu: int | None = Field(
        default=None, ge=0, validation_alias="VLLM_CPU_NUM_OF_RESERVED_CPU"
    )
    """vLLM's own variable, when set; llmq reserves no core otherwise."""

    @model_validator(mode="after")
    def _caps_ordered(self) -> Self:
        if self.lane_batch_cap > self.lane_standard_cap:
            raise ValueError(
                f"LLMQ_LANE_BATCH_CAP ({self.lane_batch_cap}) must not exceed "
                f"LLMQ_LANE_STANDARD_CAP ({self.lane_standard_cap})"
            )
        return self

    def engine_env(self) -> dict[str, str]:
        """The CPU engine's environment (vLLM reads these): the KV cache from kv_cache_gib
        unless VLLM_CPU_KVCACHE_SPACE is set, and no core held back from the engine."""
        return {
            "VLLM_CPU_KVCACHE_SPACE": str(self.vllm_cpu_kvcache_space or self.kv_cache_gib),
            "VLLM_CPU_NUM_OF_RESERVED_CPU": str(self.vllm_cpu_num_of_reserved_cpu or 0),
        }

    def api_key(self, spec: ModelSpec) -> str | None:
        """The API key of a model served over HTTP, from the variable its catalog entry names
        (`api_key_env`); None when it names none. A named variable that is unset is an error."""
        if not spec.api_key_env:
            return None
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise ValueError(
                f"model {spec.name!r} reads its API key from ${spec.api_key_env}, which is not set"
            )
        return key

    def delta_policy(self) -> DeltaPolicy:
        """How a streamed answer is cut into records."""
        return DeltaPolicy(self.stream_interval_ms / 1000, self.stream_max_tokens)

    def lane_policy(self) -> LanePolicy:
        """How the worker shares its engine between lanes."""
        return LanePolicy(
            min_share=self.lane_min_share,
            standard_cap=self.lane_standard_cap,
            batch_cap=self.lane_batch_cap,
            yield_cap=self.lane_yield_cap,
            buffer=self.lane_buffer,
            hold_s=self.lane_hold_s,
            yield_hold_s=self.lane_yield_hold_s,
        )
