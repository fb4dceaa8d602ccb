"""Error codes: which ones say that retrying can help."""

from __future__ import annotations

import pytest

from schemas.errors import ErrorCode, LlmqError
from schemas.result import ErrorInfo

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
