"""Admission: raw bytes from llmq.requests to a routed WorkItem, or a rejection that says why."""

from __future__ import annotations

import time

from pydantic import ValidationError

from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.fingerprint import fingerprint
from schemas.redact import describe
from schemas.request import ChatMessage, InferenceRequest, check_record_size
from schemas.tools import repeated_name
from schemas.work import WorkItem
from streams.decode import decode
from streams.router import plan
from streams.salvage import Rejection, salvage


def admit(raw: bytes | None, catalog: Catalog, now: float | None = None) -> WorkItem | Rejection:
    """Validate one record (None: a tombstone) and route it to a model, or say why not."""
    try:
        request = parse(raw)
        return route(request, catalog, now)
    except LlmqError as error:
        return salvage(error, raw)


def parse(raw: bytes | None) -> InferenceRequest:
    """Decode and validate the JSON envelope; errors name the offending field."""
    if raw is not None:
        check_record_size(raw)
    try:
        data = decode(raw)
    except ValueError as exc:
        raise LlmqError(ErrorCode.INVALID_JSON, f"not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise LlmqError(ErrorCode.INVALID_JSON, "the record's JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise LlmqError(ErrorCode.INVALID_REQUEST, "the request must be a JSON object")
    try:
        return InferenceRequest.model_validate(data)
    except ValidationError as exc:
        raise LlmqError(ErrorCode.INVALID_REQUEST, describe(exc)) from None


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
    twice = repeated_name(request.body.tools or [])
    if twice is not None:
        why = f"tools offer two functions named {twice!r}"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="tools")
    now = time.time() if now is None else now
    if request.expired(now):
        raise LlmqError(ErrorCode.EXPIRED, "the deadline passed before the request was admitted")
    return WorkItem(
        request=request,
        model=name,
        fingerprint=fingerprint(request, catalog.cache_scope(planned)),
        route=planned,
        admitted_at=now,
        uncompressed=uncompressed,
    )
