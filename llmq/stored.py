"""A result as the result store holds it, read the one way both clients read it."""

from __future__ import annotations

from pydantic import ValidationError

from schemas.names import result_key
from schemas.redact import describe, dotted, mask_url
from schemas.result import InferenceResult


def stored_result(raw: bytes, tenant: str, correlation_id: str, redis_url: str) -> InferenceResult:
    """The result `raw` holds. RuntimeError where it holds something else (written by
    another program): not the caller's input, and no wait makes it one."""
    try:
        return InferenceResult.model_validate_json(raw)
    except ValidationError as exc:
        raise RuntimeError(
            f"the result store (Redis at {mask_url(redis_url)}) holds no result of "
            f"{correlation_id} under {result_key(tenant, correlation_id)}, but something "
            f"else: {describe(exc, where=dotted)}"
        ) from None
