"""A model's vLLM engine arguments: device defaults, the catalog's own, llmq's, and the
same arguments as `vllm serve` flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import JsonValue

from schemas.catalog import ModelSpec
from tools.bench.ways.serve import serve_flags
from workers.engine_args import LISTED, check_names, cpu_dtype, engine_kwargs

SPEC = ModelSpec(
    name="m",
    source="s",
    max_inflight=8,
    engine_args={"dtype": "half", "enable_prefix_caching": False, "tensor_parallel_size": 2},
)


def test_the_catalog_overrides_the_device_defaults_and_llmq_sets_the_rest() -> None:
    kwargs = engine_kwargs(SPEC, Path("/ckpt"), on_gpu=False, gpu_memory_utilization=0.5)
    assert kwargs == {
        "dtype": "half",
        "enforce_eager": True,
        "structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True},
        "gpu_memory_utilization": 0.5,
        "enable_prefix_caching": False,
        "tensor_parallel_size": 2,
        "model": "/ckpt",
        "served_model_name": ["m"],
        "max_model_len": 2048,
        "max_num_seqs": 8,
        "scheduling_policy": "priority",
    }


def test_a_gpu_gets_the_models_own_dtype_and_cuda_graphs() -> None:
    spec = ModelSpec(name="m", source="s")
    kwargs = engine_kwargs(spec, Path("/ckpt"), on_gpu=True, gpu_memory_utilization=0.85)
    assert kwargs["dtype"] == "auto"
    assert "enforce_eager" not in kwargs


@pytest.mark.parametrize(
    ("flags", "dtype"),
    [
        ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16", "bfloat16"),
        ("flags\t\t: fpu sse2 avx2 amx_bf16 amx_tile", "bfloat16"),
        ("flags\t\t: fpu sse2 avx2 fma", "float32"),
        ("flags\t\t: fpu sse2 avx2 avx512f avx512bw", "float32"),
        ("Features\t: fp asimd bf16", "bfloat16"),
    ],
)
def test_a_cpu_computes_in_bf16_only_where_its_instructions_do(
    tmp_path: Path, flags: str, dtype: str
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\n{flags}\n\nprocessor\t: 1\n{flags}\n")
    assert cpu_dtype(cpuinfo) == dtype
    assert cpu_dtype(tmp_path / "absent") == "bfloat16"


def test_serve_flags_spell_each_kind_of_value_as_vllm_serve_reads_it() -> None:
    spec = {"method": "ngram", "num_speculative_tokens": 4}
    flags = serve_flags(
        {
            "max_num_seqs": 8,
            "enforce_eager": True,
            "enable_prefix_caching": False,
            "served_model_name": ["a", "b"],
            "speculative_config": spec,
            "quantization": None,
        }
    )
    assert flags == [
        *("--max-num-seqs", "8", "--enforce-eager", "--no-enable-prefix-caching"),
        *("--served-model-name", "a", "b", "--speculative-config", json.dumps(spec)),
    ]


KNOWN = {"tensor_parallel_size", "quantization", "max_num_batched_tokens", "dtype"}
"""A few of vLLM's engine arguments, as the worker reads them from AsyncEngineArgs."""


def test_every_unknown_key_is_named_each_with_its_nearest() -> None:
    """Only the first was named: a catalog with two typos took two failed starts to mend."""
    args: dict[str, JsonValue] = {"tensor_paralel_size": 2, "quantisation": "awq", "tp": 2}
    with pytest.raises(ValueError) as refused:
        check_names(ModelSpec(name="m", source="s", engine_args=args), KNOWN, "0.32.0")
    assert str(refused.value) == (
        "model 'm': engine_args has 3 keys that are no engine arguments of vLLM 0.32.0: "
        "'quantisation' (did you mean 'quantization'?), "
        "'tensor_paralel_size' (did you mean 'tensor_parallel_size'?), 'tp'; " + LISTED
    )


def test_a_key_with_no_near_one_is_told_where_the_keys_are_listed() -> None:
    with pytest.raises(ValueError) as refused:
        check_names(ModelSpec(name="m", source="s", engine_args={"tp": 2}), KNOWN, "0.32.0")
    assert str(refused.value) == (
        "model 'm': engine_args has a key that is no engine argument of vLLM 0.32.0: 'tp'; "
        "`vllm serve --help=all` lists them (as flags: dashes for underscores)"
    )
    check_names(SPEC, KNOWN | {"enable_prefix_caching"}, "0.32.0")  # all known: no error
