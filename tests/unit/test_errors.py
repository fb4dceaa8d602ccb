"""Error codes: which ones say that retrying can help."""

from __future__ import annotations

import json

import pytest

from schemas.errors import ErrorCode, LlmqError
from schemas.result import ErrorInfo, InferenceResult

RETRIABLE = {
    ErrorCode.RATE_LIMITED,
    ErrorCode.BUDGET_UNAVAILABLE,
    ErrorCode.ENGINE_ERROR,
    ErrorCode.ENGINE_UNAVAILABLE,
    ErrorCode.ENGINE_TIMEOUT,
    ErrorCode.INTERNAL_ERROR,
}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_only_waits_engine_and_internal_failures_are_retriable(code: ErrorCode) -> None:
    assert code.retriable is (code in RETRIABLE)
    assert LlmqError(code, "why").retriable is code.retriable


def test_request_problems_are_final() -> None:
    for code in (
        ErrorCode.INVALID_JSON,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.PROMPT_TOO_LARGE,
        ErrorCode.UNKNOWN_MODEL,
        ErrorCode.UNSUPPORTED,
        ErrorCode.EXPIRED,
    ):
        assert not code.retriable


def test_error_carries_code_and_message() -> None:
    error = LlmqError(ErrorCode.EXPIRED, "too late")
    assert error.code is ErrorCode.EXPIRED
    assert error.message == "too late"
    assert str(error) == "expired: too late"


def test_error_info_is_the_wire_form() -> None:
    info = ErrorInfo.from_error(LlmqError(ErrorCode.ENGINE_ERROR, "boom"))
    assert info.model_dump(mode="json") == {
        "code": "engine_error",
        "message": "boom",
        "retriable": True,
        "retry_after_s": None,
    }


def test_retry_after_travels_to_the_wire() -> None:
    info = ErrorInfo.from_error(LlmqError(ErrorCode.RATE_LIMITED, "slow down", retry_after_s=2.5))
    assert info.retriable
    assert info.retry_after_s == 2.5


def test_a_code_from_a_newer_llmq_reads_as_unknown_with_its_name_and_verdict() -> None:
    wire = {"code": "quota_melted", "message": "the quota melted", "retriable": True}
    info = ErrorInfo.model_validate(wire)
    assert info.code is ErrorCode.UNKNOWN and info.retriable
    assert (
        info.message
        == "the quota melted (error code 'quota_melted', which this llmq does not know)"
    )
    known = ErrorInfo.model_validate({**wire, "code": "expired"})
    assert (known.code, known.message) == (ErrorCode.EXPIRED, "the quota melted")


def test_a_result_with_a_newer_code_is_still_a_result() -> None:
    error = {"code": "quota_melted", "message": "m", "retriable": False}
    raw = json.dumps({"correlation_id": "c1", "tenant": "t", "status": "error", "error": error})
    result = InferenceResult.model_validate_json(raw)
    assert result.error is not None and result.error.code is ErrorCode.UNKNOWN
