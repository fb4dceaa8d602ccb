"""A worker whose engine fails to start (vLLM's KV cache does not fit, its GPU memory taken)
refuses in one line and exits 1: its 27-line traceback pushed vLLM's own reason, logged
just before, out of the lines `llmq local up` shows of a failed start."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from llmq import startup
from llmq.record_limits import RECORD_LIMIT
from schemas.catalog import ModelSpec
from workers import __main__ as worker_process
from workers.settings import WorkerSettings

pytestmark = pytest.mark.timeout(30)

REMOTE = Path(__file__).resolve().parents[2] / "examples" / "models-remote.toml"
"""Two models; remote-large's worker starts no vLLM."""
FAILED = (
    "Engine core initialization failed. See root cause above. Failed core proc(s): "
    "{'EngineCore_DP0': 1}"
)
"""What vLLM's AsyncLLM raises when its engine core process failed to start."""


def test_an_engine_that_fails_to_start_is_a_refusal_in_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def factory(settings: WorkerSettings, spec: ModelSpec) -> Any:
        def make() -> Any:
            raise RuntimeError(FAILED)

        return make

    def joined(*_: Any) -> None:
        raise AssertionError("it made its Kafka clients")

    monkeypatch.setenv("LLMQ_MODELS_FILE", str(REMOTE))
    monkeypatch.setenv("LLMQ_MODEL", "remote-large")
    monkeypatch.setenv("REMOTE_LLM_API_KEY", "k")
    monkeypatch.setattr(worker_process, "engine_factory", factory)
    monkeypatch.setattr(worker_process, "kafka_clients", joined)
    monkeypatch.setattr(startup, "serve_metrics", lambda settings: None)
    monkeypatch.setattr(startup, "reach_kafka", _limits)
    assert worker_process.main() == startup.UNREACHABLE
    refused = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in refused] == [
        "cannot start the worker: model remote-large: the engine failed to start: "
        f"RuntimeError: {FAILED} (its reason is logged above)"
    ]
    assert refused[0].exc_info is None


def _limits(*args: Any, limits_of: tuple[str, ...] = (), **kwargs: Any) -> dict[str, int]:
    """Kafka reached, and its record limits, as startup.reach_kafka returns them."""
    return dict.fromkeys(limits_of, RECORD_LIMIT)
