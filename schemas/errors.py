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
    RATE_LIMITED = "rate_limited"
    BUDGET_EXCEEDED = "budget_exceeded"
    BUDGET_UNAVAILABLE = "budget_unavailable"
    """The tenant's budget could not be read (Redis down) and its policy is to refuse then."""
    ENGINE_ERROR = "engine_error"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    ENGINE_TIMEOUT = "engine_timeout"
    INTERNAL_ERROR = "internal_error"
    ANSWER_TOO_LARGE = "answer_too_large"
    """The answer was made but is too large to send back (many logprobs); its tokens are paid."""
    CANCELLED = "cancelled"
    """Nobody waits for the answer any more (the HTTP client went away)."""
    SUPERSEDED = "superseded"
    """A worker's outcome only: the request was answered from the semantic cache while its
    speculative generation ran or waited (schemas.work.WorkItem.speculative); no reply."""
    CRASH_LOOP = "crash_loop"
    """Its generation took its worker down every time it ran; dead-lettered, not retried."""
    UNKNOWN = "unknown"
    """A code this llmq does not know, sent by a newer one: a reader keeps the result (its
    message names the code, its `retriable` is the sender's) rather than dropping it."""

    @property
    def retriable(self) -> bool:
        """True when sending the same request again may succeed."""
        return self in _RETRIABLE


_RETRIABLE = frozenset(
    {
        ErrorCode.RATE_LIMITED,
        ErrorCode.BUDGET_UNAVAILABLE,
        ErrorCode.ENGINE_ERROR,
        ErrorCode.ENGINE_UNAVAILABLE,
        ErrorCode.ENGINE_TIMEOUT,
        ErrorCode.INTERNAL_ERROR,
    }
)
FALLBACK_CODES = frozenset(
    {ErrorCode.ENGINE_ERROR, ErrorCode.ENGINE_UNAVAILABLE, ErrorCode.ENGINE_TIMEOUT}
)
"""Failures of one model's engine that the next model of its fallback chain may not share."""


class LlmqError(Exception):
    """An error with a code; `retriable` is what retry, DLQ and reply logic read."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        retry_after_s: float | None = None,
        *,
        retried: bool = False,
        param: str | None = None,
    ) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.param = param
        """The request field at fault, as OpenAI's errors name it ("messages[0].content"),
        where one is."""
        self.retry_after_s = retry_after_s
        """When retrying can help: the earliest moment it may (rate limits, budgets)."""
        self.retried = retried
        """Whoever raised it already retried the failed call as often as its own policy
        allows, so no outer layer retries it again: retries do not stack."""

    @property
    def retriable(self) -> bool:
        """Whether sending the same request again may succeed."""
        return self.code.retriable
