"""Every request field is bounded, and results are kept per tenant."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from llmq.client import Client
from schemas.names import REDIS_RESULT_PREFIX, response_key, result_key
from schemas.request import (
    MAX_CONTENT_CHARS,
    MAX_PROMPT_CHARS,
    MAX_UNIX_TIME,
    ChatBody,
    InferenceRequest,
)


def _body(chars: int, parts: int) -> dict[str, Any]:
    """`parts` messages holding `chars` characters in all."""
    sizes = [chars // parts] * parts
    sizes[-1] += chars - sum(sizes)
    return {"messages": [{"role": "user", "content": "x" * n} for n in sizes]}


def test_the_messages_together_are_bounded() -> None:
    parts = MAX_PROMPT_CHARS // MAX_CONTENT_CHARS + 1  # each message within its own limit
    assert ChatBody.model_validate(_body(MAX_PROMPT_CHARS, parts)).prompt_chars() == (
        MAX_PROMPT_CHARS
    )
    with pytest.raises(ValidationError, match=f"at most {MAX_PROMPT_CHARS}"):
        ChatBody.model_validate(_body(MAX_PROMPT_CHARS + 1, parts))


@pytest.mark.parametrize("field", ["deadline", "created_at"])
def test_times_are_bounded_unix_seconds(field: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    at_limit = InferenceRequest.model_validate(
        {"correlation_id": "c", field: MAX_UNIX_TIME, "body": body}
    )
    assert getattr(at_limit, field) == MAX_UNIX_TIME
    milliseconds = 1_795_000_000_000.0
    for bad in (milliseconds, MAX_UNIX_TIME * 1.0001, 0.0):
        with pytest.raises(ValidationError, match=field):
            InferenceRequest.model_validate({"correlation_id": "c", field: bad, "body": body})


def test_result_and_response_keys_are_per_tenant_and_unambiguous() -> None:
    assert result_key("acme", "order-42") == f"{REDIS_RESULT_PREFIX}{{acme}}:order-42"
    assert result_key("acme", "x") != result_key("globex", "x")
    # Identifiers may hold ':'; the braces keep these two apart.
    assert result_key("a:b", "c") != result_key("a", "b:c")
    assert response_key("acme", "resp_1") != response_key("globex", "resp_1")
    assert response_key("a:b", "c") != response_key("a", "b:c")


def test_result_keys_refuse_a_tenant_that_could_forge_another() -> None:
    with pytest.raises(ValueError, match="braces"):
        result_key("a}:{b", "c")


@pytest.mark.parametrize("tenant", ["", "has space", "x" * 129, "a}b"])
def test_a_client_takes_only_a_valid_tenant(tenant: str) -> None:
    with pytest.raises(ValueError, match="not an identifier"):
        Client(listen=False, tenant=tenant)
