"""Admission: raw bytes from llmq.requests to a routed WorkItem, or a rejection that says why."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from pydantic import ValidationError

from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.fingerprint import fingerprint
from schemas.names import RESULTS
from schemas.redact import MAX_NAME_CHARS, describe
from schemas.request import IDENTIFIER, REPLY_TOPIC, ChatMessage, InferenceRequest
from schemas.work import WorkItem
from streams.router import plan

MAX_RECORD_BYTES = 450_000
"""The largest request record admitted: its work item, which may also carry the prompt as the
app sent it (before compression), must fit in Kafka's default 1 MB message."""


@dataclass(frozen=True)
class Rejection:
    """A request that will not be served, with whatever of its envelope could be read."""

    error: LlmqError
    correlation_id: str | None
    tenant: str | None
    reply_to: str | None
    """Where to send the error reply; None when the record names no usable reply topic."""


def admit(raw: bytes | None, catalog: Catalog, now: float | None = None) -> WorkItem | Rejection:
    """Validate one record (None: a tombstone) and route it to a model, or say why not."""
    try:
        request = parse(raw)
        return route(request, catalog, now)
    except LlmqError as error:
        return salvage(error, raw)


def parse(raw: bytes | None) -> InferenceRequest:
    """Decode and validate the JSON envelope; errors name the offending field."""
    if raw is not None and len(raw) > MAX_RECORD_BYTES:
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


def _decode(raw: bytes | None, lenient: bool = False) -> object:
    """UTF-8 JSON, a leading BOM allowed (RFC 8259): json.loads would guess UTF-16/32 from
    bytes. Lenient (for salvage) reads past bad bytes and bad field names. Raises ValueError
    (no value, bad bytes, bad JSON) or RecursionError (deep nesting)."""
    if raw is None:
        raise ValueError("the record has no value (a tombstone)")
    text = raw.decode("utf-8-sig", "replace" if lenient else "strict")
    return json.loads(text, parse_int=_integer, object_pairs_hook=None if lenient else _object)


def _object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object whose field names are text (pydantic cannot say which one is not)."""
    for key, _ in pairs:
        try:
            key.encode()
        except UnicodeEncodeError:
            raise ValueError(
                f"field name {key[:MAX_NAME_CHARS]!a} is not Unicode text (a lone surrogate)"
            ) from None
    return dict(pairs)


def _integer(digits: str) -> int | float:
    """JSON allows any number of digits, int() refuses more than 4300: such a number is
    infinite for every field, which validation then rejects by name."""
    try:
        return int(digits)
    except ValueError:
        return -math.inf if digits.startswith("-") else math.inf


def salvage(error: LlmqError, raw: bytes | None) -> Rejection:
    """Salvage the envelope fields an error reply needs from a record that failed validation."""
    try:
        # Past bad bytes elsewhere in the record: the fields kept are checked by pattern.
        data = _decode(raw, lenient=True)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return Rejection(error, None, None, None)
    reply_to = data.get("reply_to", RESULTS)
    return Rejection(
        error,
        correlation_id=_identifier(data.get("correlation_id")),
        tenant=_identifier(data.get("tenant")),
        reply_to=reply_to
        if isinstance(reply_to, str) and REPLY_TOPIC.fullmatch(reply_to)
        else None,
    )


def _identifier(value: object) -> str | None:
    """A salvaged id, only if it is a sane string (it will be echoed back and logged)."""
    if isinstance(value, str) and IDENTIFIER.fullmatch(value):
        return value
    return None
