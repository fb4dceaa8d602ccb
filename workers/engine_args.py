"""A model's vLLM engine arguments: llmq's device defaults, then the catalog's
`engine_args`, then what llmq owns. Light (no vLLM import): the worker and the benchmark's
`vllm serve` take the same ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas.catalog import ModelSpec


def engine_kwargs(
    spec: ModelSpec, checkpoint: Path, *, on_gpu: bool, gpu_memory_utilization: float
) -> dict[str, Any]:
    """vLLM's AsyncEngineArgs for `spec`, by name. On a CPU: bf16 in eager mode; on a GPU:
    the model's own dtype and CUDA graphs. The catalog's engine_args override these."""
    device: dict[str, Any] = (
        {"dtype": "auto"} if on_gpu else {"dtype": "bfloat16", "enforce_eager": True}
    )
    owned = {
        "model": str(checkpoint),
        "served_model_name": [spec.name],
        "max_model_len": spec.max_model_len,
        "max_num_seqs": spec.max_inflight,
        "scheduling_policy": "priority",
    }
    return {
        **device,
        "gpu_memory_utilization": gpu_memory_utilization,
        **spec.engine_args,
        **owned,
    }
