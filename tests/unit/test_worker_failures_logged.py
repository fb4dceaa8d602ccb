"""A generation the engine failed, or that ran past its timeout, is said in the worker's log
(a WARNING naming the request, the model and the error's message); a failure that is the
request's own is its reply's alone."""

from __future__ import annotations

import logging

import pytest

from schemas.errors import ErrorCode, LlmqError
from tests.unit.worker_fakes import MODEL, FailingEngine, FakeEngine, model_spec, serve_one, work

pytestmark = pytest.mark.timeout(30)

CUDA = "generation failed: RuntimeError: CUDA error: an illegal memory access was encountered"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "workers.worker" and r.levelno == logging.WARNING
    ]


def test_an_engine_error_is_logged_with_the_request_model_and_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = FailingEngine(LlmqError(ErrorCode.ENGINE_ERROR, CUDA))
    [failed] = serve_one(work(), engine).completions()
    assert failed.error is not None and failed.error.code is ErrorCode.ENGINE_ERROR
    [request_id] = [started[0] for started in engine.started]
    assert request_id.startswith("standard-0@")
    assert _warnings(caplog) == [
        f"{request_id}: the generation on {MODEL} failed (engine_error): {CUDA}"
    ]


def test_a_timeout_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(step_s=30)
    serve_one(work(), engine, spec=model_spec(timeout_s=0.05))
    [request_id] = [started[0] for started in engine.started]
    [line] = _warnings(caplog)
    assert line.startswith(f"{request_id}: the generation on {MODEL} failed (engine_timeout): ")
    assert "ran past 0.05s" in line


def test_a_failure_of_the_request_itself_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Its message may quote the server's answer to it (a remote's 400): the reply's alone."""
    engine = FailingEngine(LlmqError(ErrorCode.INVALID_REQUEST, "temperature must be non-negative"))
    [failed] = serve_one(work(), engine).completions()
    assert failed.error is not None and failed.error.code is ErrorCode.INVALID_REQUEST
    assert _warnings(caplog) == []
