"""The result contract: what an app receives on its reply topic and from the result store."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.request import SCHEMA_VERSION, ChatMessage
from schemas.route import Route
from schemas.tools import FunctionCall, ToolCall

_KNOWN_CODES = frozenset(ErrorCode)


class CacheStatus(StrEnum):
    """How the answer was obtained without (or with) an engine generation of its own."""

    NONE = "none"
    EXACT = "exact"
    SEMANTIC = "semantic"
    COALESCED = "coalesced"


class PromptTokensDetails(BaseModel):
    """OpenAI's usage.prompt_tokens_details."""

    model_config = ConfigDict(frozen=True)

    cached_tokens: int = Field(ge=0)
    """Prompt tokens the engine found in its prefix cache (not computed again)."""


class Usage(BaseModel):
    """Token counts, OpenAI-shaped."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    prompt_tokens_details: PromptTokensDetails | None = None
    """From an engine that tells (vLLM)."""


class TopLogprob(BaseModel):
    """One of the most likely tokens at a position, with its log-probability."""

    model_config = ConfigDict(frozen=True)

    token: str
    logprob: float


class TokenLogprob(BaseModel):
    """One generated token and its log-probability; with `top_logprobs` asked, the most
    likely tokens at its position, most likely first."""

    model_config = ConfigDict(frozen=True)

    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    """OpenAI's `choices[].logprobs`, present when the request asked for logprobs."""

    model_config = ConfigDict(frozen=True)

    content: list[TokenLogprob]


class AnswerMessage(ChatMessage):
    """An answer's message: a request's, but for the bound on its text, which is a prompt's
    (an answer is bounded by its max_tokens, and its record by the topic's size)."""

    content: str


class Choice(BaseModel):
    """One answer."""

    model_config = ConfigDict(frozen=True)

    index: int = 0
    message: AnswerMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None

    @field_validator("message", mode="before")
    @classmethod
    def _newer_message_fields(cls, message: Any) -> Any:
        """An answer's message read without the fields this llmq does not know (a newer
        llmq's, during an upgrade), in it and in its tool calls: the message model refuses
        them, as a request's must. (On the field alone: a model validator made pydantic
        build the whole choice, logprobs too, as Python objects first, 1.5x the time.)"""
        if isinstance(message, ChatMessage) and not isinstance(message, AnswerMessage):
            message = message.model_dump()  # a request's message, as an answer's
        if not isinstance(message, dict):
            return message
        known = _known(message, AnswerMessage)
        calls = known.get("tool_calls")
        if isinstance(calls, list):
            known["tool_calls"] = [_known_call(call) for call in calls]
        return known


def _known(data: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    return {name: value for name, value in data.items() if name in model.model_fields}


def _known_call(call: Any) -> Any:
    if not isinstance(call, dict):
        return call
    known = _known(call, ToolCall)
    if isinstance(known.get("function"), dict):
        known["function"] = _known(known["function"], FunctionCall)
    return known


class ChatCompletion(BaseModel):
    """The OpenAI chat-completions response body."""

    model_config = ConfigDict(frozen=True)

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Timings(BaseModel):
    """Where the time went, in milliseconds; None where a stage did not happen."""

    model_config = ConfigDict(frozen=True)

    queue_ms: float | None = None
    """From the work's last send to a work topic (its retry's backoff's end, if later; admission
    in a record of a stream processor before that) to the worker's start."""
    ttft_ms: float | None = None
    """From the worker's start to the first generated token."""
    engine_ms: float | None = None
    """From the worker's start to the last token."""
    total_ms: float | None = None
    """From the app's created_at to the result."""


class ErrorInfo(BaseModel):
    """Why there is no answer, and whether retrying can help."""

    model_config = ConfigDict(frozen=True)

    code: ErrorCode
    message: str
    retriable: bool
    retry_after_s: float | None = None
    """Seconds to wait before retrying, when llmq knows (rate limits, budgets)."""

    @model_validator(mode="before")
    @classmethod
    def _newer_code(cls, data: Any) -> Any:
        """A code from a newer llmq reads as UNKNOWN, named in the message, so an app still
        gets its request's end instead of a result it cannot parse."""
        code = data.get("code") if isinstance(data, dict) else None
        if not isinstance(code, str) or code in _KNOWN_CODES:
            return data
        said = f"{data.get('message', '')} (error code {code!r}, which this llmq does not know)"
        return {**data, "code": ErrorCode.UNKNOWN, "message": said}

    @classmethod
    def from_error(cls, error: LlmqError) -> Self:
        """The wire form of an LlmqError."""
        return cls(
            code=error.code,
            message=error.message,
            retriable=error.retriable,
            retry_after_s=error.retry_after_s,
        )


class InferenceResult(BaseModel):
    """Exactly one per request: an answer (fresh or cached) or an error."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    correlation_id: str | None
    """None only for a record so broken that no correlation_id could be read from it."""
    tenant: str | None = None
    status: Literal["ok", "error"]
    model_used: str | None = None
    route: Route | None = None
    """How the answer was reached: models tried, escalation, fallback (None for a rejection)."""
    cache: CacheStatus = CacheStatus.NONE
    lane: Lane | None = None
    """The request's lane (None for a rejection)."""
    cost_usd: float | None = None
    """What the request's generations cost at the catalog's prices (0 for an answer served
    without one; None for a rejection)."""
    response: ChatCompletion | None = None
    error: ErrorInfo | None = None
    timings: Timings = Timings()
    finished_at: float = Field(default_factory=time.time)

    @property
    def asked_at(self) -> float:
        """When its request was made (the app's created_at), where the timings say: the time
        every answer to one request shares, even one made anew at its own time (a redelivery
        while the result store was away); else when it was answered."""
        total_ms = self.timings.total_ms
        return self.finished_at if total_ms is None else self.finished_at - total_ms / 1000

    @property
    def text(self) -> str | None:
        """The answer's text, or None for an error."""
        if self.response is None or not self.response.choices:
            return None
        return self.response.choices[0].message.content
