"""A model's vLLM engine arguments: llmq's device defaults, then the catalog's
`engine_args`, then what llmq owns; and the check of the catalog's names. Light (no vLLM
import): the worker and the benchmark's `vllm serve` take the same ones."""

from __future__ import annotations

import difflib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from schemas.catalog import ModelSpec

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""x86 CPU flags (/proc/cpuinfo) of bf16 arithmetic in hardware. Without them torch emulates
bf16 on the CPU: SmolLM2-135M ran at 25 output tokens/s in bf16 and 147 in fp32 on an
AVX2-only EPYC (48 prompts at once, 2026-11-30)."""
LISTED = "`vllm serve --help=all` lists them (as flags: dashes for underscores)"
"""Where vLLM's engine arguments are listed, for an operator who named one it lacks."""


def engine_kwargs(
    spec: ModelSpec, checkpoint: Path, *, on_gpu: bool, gpu_memory_utilization: float
) -> dict[str, Any]:
    """vLLM's AsyncEngineArgs for `spec`, by name. On a CPU: eager mode, in bf16 where the
    CPU computes it and fp32 elsewhere; on a GPU: the model's own dtype and CUDA graphs; on
    both, compact JSON answers. The catalog's engine_args override these."""
    device: dict[str, Any] = (
        {"dtype": "auto"} if on_gpu else {"dtype": cpu_dtype(), "enforce_eager": True}
    )
    # JSON answers (response_format) without whitespace between their tokens: a small model
    # otherwise spends its max_tokens on blank lines inside an object. vLLM takes this per
    # engine only, not per request, and only from a named backend: llguidance, which
    # compiles every JSON schema feature (vLLM's "auto" falls back to it from xgrammar).
    compact = {"structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True}}
    owned = {
        "model": str(checkpoint),
        "served_model_name": [spec.name],
        "max_model_len": spec.max_model_len,
        "max_num_seqs": spec.max_inflight,
        "scheduling_policy": "priority",
    }
    return {
        **device,
        **compact,
        "gpu_memory_utilization": gpu_memory_utilization,
        **spec.engine_args,
        **owned,
    }


def cpu_dtype(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """bfloat16 where the CPU has bf16 instructions (or where its flags cannot be read: an
    ARM or a Mac, whose vLLM builds choose for themselves), float32 elsewhere."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "bfloat16"
    flags = next((line for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None or BF16_FLAGS & set(flags.split()):
        return "bfloat16"
    return "float32"


def check_names(spec: ModelSpec, known: Collection[str], version: str) -> None:
    """A ValueError naming every key of `spec`'s engine_args that is no engine argument of
    vLLM `version` (`known`), each with the nearest where one is close, and where they are
    listed: all in one failed start, not one a start."""
    unknown = sorted(spec.engine_args.keys() - set(known))
    if not unknown:
        return
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        named.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    what = (
        "a key that is no engine argument"
        if len(unknown) == 1
        else f"{len(unknown)} keys that are no engine arguments"
    )
    raise ValueError(
        f"model {spec.name!r}: engine_args has {what} of vLLM {version}: {', '.join(named)}; "
        f"{LISTED}"
    )
