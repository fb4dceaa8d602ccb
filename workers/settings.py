"""The worker's settings (LLMQ_* environment variables)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field

from schemas.settings import ServiceSettings


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
    commit_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often finished offsets are committed (LLMQ_COMMIT_INTERVAL_S)."""
    drain_timeout_s: float = Field(default=30.0, ge=0, le=3600)
    """On SIGTERM: how long in-flight requests may run before they are handed back."""
