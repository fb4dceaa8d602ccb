"""Admission: raw bytes from llmq.requests to a routed WorkItem, or a rejection that says why."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from pydantic import ValidationError

from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.fingerprint import fingerprint
from schemas.request import IDENTIFIER, ChatMessage, InferenceRequest
from schemas.topics import RESULTS, TOPIC_NAME
from schemas.work import WorkItem
from streams.router import plan

MAX_RECORD_BYTES = 1_048_576


@dataclass(frozen=True)
class Rejection:
    """A request that will not be served, with whatever of its envelope could be read."""

    error: LlmqError
    correlation_id: str | None
    tenant: str | None
    reply_to: str | None
    """Where to send the error reply; None when the record names no usable reply topic."""


def admit(raw: bytes, catalog: Catalog, now: float | None = None) -> WorkItem | Rejection:
    """Validate one record and route it to a model, or say why not."""
    try:
        request = parse(raw)
        return route(request, catalog, now)
    except LlmqError as error:
        return salvage(error, raw)


def parse(raw: bytes) -> InferenceRequest:
    """Decode and validate the JSON envelope; errors name the offending field."""
    if len(raw) > MAX_RECORD_BYTES:
        raise LlmqError(
            ErrorCode.PROMPT_TOO_LARGE,
            f"record is {len(raw)} bytes; the limit is {MAX_RECORD_BYTES}",
        )
    try:
        data = _decode(raw)
    except (ValueError, RecursionError) as exc:
        raise LlmqError(ErrorCode.INVALID_JSON, f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LlmqError(ErrorCode.INVALID_REQUEST, "the request must be a JSON object")
    try:
        return InferenceRequest.model_validate(data)
    except ValidationError as exc:
        raise LlmqError(ErrorCode.INVALID_REQUEST, _describe(exc)) from None


def route(
    request: InferenceRequest,
    catalog: Catalog,
    now: float | None = None,
    uncompressed: list[ChatMessage] | None = None,
) -> WorkItem:
    """Plan the route, check the request fits its first model, and fingerprint it."""
    planned = plan(request, catalog)
    name = planned.current
    spec = catalog.get(name)
    if spec is None:  # plan() names catalog models only
        raise LlmqError(ErrorCode.UNKNOWN_MODEL, f"unknown model {name!r}")
    if request.body.stream:
        raise LlmqError(
            ErrorCode.UNSUPPORTED,
            "token streaming (stream=true) is not served yet; send stream=false",
        )
    chars = request.body.prompt_chars()
    if chars > spec.max_prompt_chars:
        raise LlmqError(
            ErrorCode.PROMPT_TOO_LARGE,
            f"prompt has {chars} characters; {name} takes at most {spec.max_prompt_chars}",
        )
    if request.body.max_tokens >= spec.max_model_len:
        raise LlmqError(
            ErrorCode.PROMPT_TOO_LARGE,
            f"max_tokens {request.body.max_tokens} does not fit {name}'s context of "
            f"{spec.max_model_len} tokens",
        )
    now = time.time() if now is None else now
    if request.expired(now):
        raise LlmqError(ErrorCode.EXPIRED, "the deadline passed before the request was admitted")
    return WorkItem(
        request=request,
        model=name,
        fingerprint=fingerprint(request, planned.requested),
        route=planned,
        admitted_at=now,
        uncompressed=uncompressed,
    )


def _decode(raw: bytes) -> object:
    """UTF-8 JSON only: json.loads would guess UTF-16/32 from bytes. Raises ValueError
    (bad bytes, bad JSON, an integer too long to convert) or RecursionError (deep nesting)."""
    return json.loads(raw.decode("utf-8"))


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as one line a person can act on: `field.path: problem; ...`."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "request"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def salvage(error: LlmqError, raw: bytes) -> Rejection:
    """Salvage the envelope fields an error reply needs from a record that failed validation."""
    try:
        data = _decode(raw)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return Rejection(error, None, None, None)
    reply_to = data.get("reply_to", RESULTS)
    return Rejection(
        error,
        correlation_id=_identifier(data.get("correlation_id")),
        tenant=_identifier(data.get("tenant")),
        reply_to=reply_to if isinstance(reply_to, str) and TOPIC_NAME.fullmatch(reply_to) else None,
    )


def _identifier(value: object) -> str | None:
    """A salvaged id, only if it is a sane string (it will be echoed back and logged)."""
    if isinstance(value, str) and IDENTIFIER.fullmatch(value):
        return value
    return None
