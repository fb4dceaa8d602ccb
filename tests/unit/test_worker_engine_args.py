"""A worker whose catalog entry has wrong engine_args refuses to start in one line that
names the model once and every wrong key, before it builds a checkpoint. No engine starts."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from workers import __main__ as worker_process

with warnings.catch_warnings():  # vLLM warns as it loads; the worker imports it to check
    warnings.simplefilter("ignore", DeprecationWarning)
    import workers.vllm_engine  # noqa: F401

pytestmark = pytest.mark.timeout(60)


def _refusal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path, entry: str
) -> str:
    """The worker's one line for a catalog of model "m" with `entry`, and its exit code 2."""
    models = tmp_path / "models.toml"
    models.write_text(f'default = "m"\n[[models]]\nname = "m"\n{entry}\n', encoding="utf-8")
    monkeypatch.setenv("LLMQ_MODELS_FILE", str(models))
    monkeypatch.setenv("LLMQ_MODEL", "m")
    for name in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.setenv(name, "1")  # the worker sets them for vLLM; put back after
    assert worker_process.main() == 2
    refused = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(refused) == 1
    return refused[0]


def test_every_wrong_key_is_named_once_with_the_model(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """It read "model m: model 'm': engine_args has 'tensor_paralel_size'", and no more."""
    entry = (
        f'source = "{tmp_path}"\n'  # no checkpoint there: the keys are checked before it
        'engine_args = { tensor_paralel_size = 2, quantisation = "awq", tp = 2 }'
    )
    line = _refusal(monkeypatch, caplog, tmp_path, entry)
    assert line.startswith(
        "cannot start the worker: model 'm': engine_args has 3 keys that are no engine "
        "arguments of vLLM "
    )
    assert "'quantisation' (did you mean 'quantization'?)" in line
    assert "'tensor_paralel_size' (did you mean 'tensor_parallel_size'?), 'tp';" in line
    assert "vllm serve --help=all" in line
    assert line.count("'m'") == 1 and "model m:" not in line


def test_a_missing_checkpoint_names_the_model_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    line = _refusal(monkeypatch, caplog, tmp_path, f'source = "{tmp_path}"')
    assert line.startswith(f"cannot start the worker: model 'm': model source '{tmp_path}' is")
