"""Rate limits without Redis: the token estimate, and the decisions made before any I/O."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatBody, ChatMessage
from schemas.tenants import TenantLimits
from streams.ratelimit import RateLimiter


def _body(*contents: str, max_tokens: int = 100) -> ChatBody:
    return ChatBody(
        messages=[ChatMessage(role="user", content=c) for c in contents], max_tokens=max_tokens
    )


@pytest.mark.parametrize(
    ("contents", "max_tokens", "tokens"),
    [
        (("",), 1, 1),
        (("abcd",), 10, 11),
        (("abcde",), 10, 12),  # rounded up
        (("ab", "cd", "e"), 64, 66),  # all messages count
        (("x" * 4000,), 256, 1256),
    ],
)
def test_estimate_is_prompt_chars_over_four_rounded_up_plus_max_tokens(
    contents: tuple[str, ...], max_tokens: int, tokens: int
) -> None:
    assert _body(*contents, max_tokens=max_tokens).estimated_tokens() == tokens


def _check(limits: TenantLimits, tokens: int) -> None:
    """Run one check against a Redis that is not there: only decisions without I/O succeed
    quietly (anything reaching Redis would log a fail-open warning)."""

    async def run() -> None:
        client: aioredis.Redis = aioredis.Redis(port=1, socket_connect_timeout=0.5)
        try:
            await RateLimiter(client).check(
                "acme", limits, tokens, request_id="req-1", fingerprint="fp"
            )
        finally:
            await client.connection_pool.disconnect()

    asyncio.run(run())


def test_a_request_larger_than_the_bucket_is_refused_for_good(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(LlmqError) as caught:
        _check(TenantLimits(tokens_per_minute=1_000), 1_001)
    assert caught.value.code is ErrorCode.PROMPT_TOO_LARGE
    assert not caught.value.retriable
    assert caught.value.retry_after_s is None
    assert caught.value.message == (
        "this request needs about 1001 tokens (prompt estimate + max_tokens) and tenant acme "
        "may use at most 1000 tokens per minute; lower max_tokens or shorten the prompt"
    )
    assert not caplog.records


def test_an_unlimited_tenant_is_admitted_without_redis(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _check(TenantLimits(budget_usd=1.0), 10**9)
    assert not caplog.records
