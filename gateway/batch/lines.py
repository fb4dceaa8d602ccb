"""The Batch API's line formats, OpenAI's both ways: an input line into llmq's request, and
an answer into an output or error line, in the shape of the batch's endpoint."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.openai import Call, completion, error_body, read_call
from gateway.responses import Echo, ResponseCall, read_response_call, response_of
from gateway.text import read_text_call, text_completion_of
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.names import BATCH_RESULTS
from schemas.request import InferenceRequest
from schemas.result import InferenceResult

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
TEXT_ENDPOINT = "/v1/completions"
RESPONSES_ENDPOINT = "/v1/responses"
READERS: dict[str, Callable[..., Call]] = {
    ENDPOINT: read_call,
    TEXT_ENDPOINT: read_text_call,
    RESPONSES_ENDPOINT: read_response_call,
}
"""The endpoints a batch may call, one for all its lines (chat or text completions, or
responses), and the reader of each one's bodies."""
ENDPOINTS = tuple(READERS)
MAX_CUSTOM_ID = 512
UNREADABLE = "llmq failed to read this line's body (a bug, logged at the front door)"
"""The error of a line whose reader raised what it should not: the batch goes on (a step
that failed again on each try left the batch validating until it expired)."""


@dataclass(frozen=True)
class Line:
    """One checked input line: its custom_id and the request it asks for."""

    custom_id: str
    request: InferenceRequest
    asked: dict[str, Any] | None = None
    """A response's line: what its body asked, which its output line echoes."""


def read_line(
    raw: bytes,
    *,
    tenant: str,
    catalog: Catalog,
    deadline: float,
    correlation_id: str,
    endpoint: str = ENDPOINT,
) -> Line:
    """An input line's request to the batch's `endpoint`, on the batch lane with the batch's
    deadline; LlmqError saying what is wrong with it (its size too, as a record), or
    UNREADABLE where its reader failed otherwise (logged)."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise LlmqError(ErrorCode.INVALID_JSON, f"the line is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LlmqError(ErrorCode.INVALID_REQUEST, "the line must be a JSON object")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
        why = f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why)
    if data.get("method") != "POST":
        raise LlmqError(ErrorCode.INVALID_REQUEST, "method must be POST")
    if data.get("url") != endpoint:
        why = f"url must be {endpoint}, the endpoint of the batch"
        raise LlmqError(ErrorCode.UNSUPPORTED, why)
    now = time.time()
    try:
        call = READERS[endpoint](
            _batch_body(data.get("body")),
            tenant=tenant,
            lane=Lane.BATCH.value,
            catalog=catalog,
            timeout_s=deadline - now,
        )
    except LlmqError:
        raise
    except Exception as exc:  # a bug: this line's error, not every line's
        log.error("batch line %s is refused: its reader failed", correlation_id, exc_info=exc)
        raise LlmqError(ErrorCode.INVALID_REQUEST, UNREADABLE) from None
    request = call.request.model_copy(
        update={"correlation_id": correlation_id, "reply_to": BATCH_RESULTS}
    )
    request.record()  # a line too large to publish is named at validation
    return Line(custom_id, request, call.asked if isinstance(call, ResponseCall) else None)


def _batch_body(body: object) -> object:
    """A line's body as batch work: on the batch lane (its own `lane` dropped), whole, one
    answer."""
    if not isinstance(body, dict):
        return body  # read_call names the problem
    if body.get("stream"):
        raise LlmqError(ErrorCode.INVALID_REQUEST, "a batch line cannot be streamed")
    if (body.get("n") or 1) != 1:
        raise LlmqError(ErrorCode.UNSUPPORTED, "a batch line makes one answer: n must be 1")
    return {k: v for k, v in body.items() if k != "lane"}


def output_line(
    custom_id: str,
    result: InferenceResult,
    endpoint: str = ENDPOINT,
    asked: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The output (an answer, in `endpoint`'s shape; a response echoes what its line
    `asked`, and is not stored) or error-file line (an error reply) of a result."""
    line_id = str(result.correlation_id)
    if result.error is not None:
        return failed_line(custom_id, line_id, result.error.code, result.error.message)
    answer = _answer(result, endpoint, asked or {})
    return _replied(custom_id, line_id, 200, answer)


def failed_line(custom_id: str, line_id: str, code: ErrorCode, message: str) -> dict[str, Any]:
    """The error-file line of a request that failed (an error reply, a line refused as it
    was sent, a reply that could not be written): OpenAI's shape of a request's failure, a
    response with the status and error body the HTTP API would have answered."""
    status, body = error_body(code, message)
    return _replied(custom_id, line_id, status, body)


def _replied(custom_id: str, line_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_{line_id}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": f"req_{line_id}", "body": body},
        "error": None,
    }


def _answer(result: InferenceResult, endpoint: str, asked: dict[str, Any]) -> dict[str, Any]:
    if endpoint == TEXT_ENDPOINT:
        return text_completion_of([result])
    if endpoint == RESPONSES_ENDPOINT:
        return response_of(Echo(str(result.correlation_id), asked, store=False), [result])
    return completion(result)


def error_line(custom_id: str, line_id: str, code: str, message: str) -> dict[str, Any]:
    """The error-file line of a line the batch itself ended (batch_expired,
    batch_cancelled): as OpenAI's, no response, an error of code and message."""
    return {
        "id": f"batch_req_{line_id}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
