"""A result as a client reads it, from its reply topic or the result store, the one way
both clients read it."""

from __future__ import annotations

import json

from pydantic import ValidationError

from llmq.chat import Key
from schemas.errors import ErrorCode, LlmqError
from schemas.names import result_key
from schemas.redact import describe, dotted, mask_url
from schemas.request import SCHEMA_VERSION
from schemas.result import InferenceResult


def stored_result(raw: bytes, tenant: str, correlation_id: str, redis_url: str) -> InferenceResult:
    """The result `raw` holds. RuntimeError where it holds something else (written by
    another program), LlmqError (internal_error) where a newer llmq wrote it, as its reply
    read from the topic: not the caller's input, and no wait makes it one."""
    try:
        return InferenceResult.model_validate_json(raw)
    except ValidationError as exc:
        newer = _newer(_fields(raw), correlation_id)
        if newer is not None:
            raise LlmqError(ErrorCode.INTERNAL_ERROR, newer) from None
        raise RuntimeError(
            f"the result store (Redis at {mask_url(redis_url)}) holds no result of "
            f"{correlation_id} under {result_key(tenant, correlation_id)}, but something "
            f"else: {describe(exc, where=dotted)}"
        ) from None


def unreadable(raw: bytes, exc: ValidationError) -> tuple[Key, LlmqError] | None:
    """The request a reply that is no result this llmq reads names (its tenant and
    correlation_id), with the error its waiter is to raise rather than wait in vain
    (internal_error, which the front door answers as such, streamed or not); None where
    it is no reply of llmq's (another app's record on the topic: no `status`, and no
    other schema_version), whose waiter goes on waiting for its own."""
    fields = _fields(raw)
    tenant, correlation_id = fields.get("tenant"), fields.get("correlation_id")
    if not isinstance(tenant, str) or not isinstance(correlation_id, str):
        return None
    newer = _newer(fields, correlation_id)
    if newer is None and "status" not in fields:
        return None
    why = newer or (
        f"the reply to {correlation_id} is no result this llmq reads: {describe(exc, where=dotted)}"
    )
    return (tenant, correlation_id), LlmqError(ErrorCode.INTERNAL_ERROR, why)


def _fields(raw: bytes) -> dict[str, object]:
    try:
        fields = json.loads(raw)
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


def _newer(fields: dict[str, object], correlation_id: str) -> str | None:
    """What to say of a record of another schema_version (None for this one's)."""
    version = fields.get("schema_version", SCHEMA_VERSION)
    if version == SCHEMA_VERSION:
        return None
    return (
        f"the result of {correlation_id} is a record of schema_version {version!r}, written "
        f"by a newer llmq; this llmq reads {SCHEMA_VERSION}: upgrade it"
    )
