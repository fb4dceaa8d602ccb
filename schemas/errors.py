"""Error codes of llmq: every error reply carries one, and whether retrying can help."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a request ended without an answer."""

    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    PROMPT_TOO_LARGE = "prompt_too_large"
    UNKNOWN_MODEL = "unknown_model"
    UNSUPPORTED = "unsupported"
    EXPIRED = "expired"
    ENGINE_ERROR = "engine_error"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    INTERNAL_ERROR = "internal_error"

    @property
    def retriable(self) -> bool:
        """True when sending the same request again may succeed."""
        return self in _RETRIABLE


_RETRIABLE = frozenset(
    {ErrorCode.ENGINE_ERROR, ErrorCode.ENGINE_UNAVAILABLE, ErrorCode.INTERNAL_ERROR}
)


class LlmqError(Exception):
    """An error with a code; `retriable` is what retry, DLQ and reply logic read."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    @property
    def retriable(self) -> bool:
        """Whether sending the same request again may succeed."""
        return self.code.retriable
