"""Rate limits without Redis: the token estimate, and the decisions made before any I/O."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import cast

import pytest
import redis.asyncio as aioredis

from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatBody, ChatMessage, ChoiceOf
from schemas.tenants import TenantLimits
from streams.budget import Budgets, Hold
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


def _check(limits: TenantLimits, tokens: int, call: ChoiceOf | None = None) -> None:
    """Run one check against a Redis that is not there: only decisions without I/O succeed
    quietly (anything reaching Redis would log a fail-open warning)."""

    async def run() -> None:
        client: aioredis.Redis = aioredis.Redis(port=1, socket_connect_timeout=0.5)
        try:
            await RateLimiter(client).check(
                "acme", limits, tokens, request_id="req-1", fingerprint="fp", call=call
            )
        finally:
            await client.connection_pool.disconnect()

    asyncio.run(run())


def test_a_request_larger_than_the_bucket_is_refused_for_good(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not prompt_too_large, which reaches HTTP clients as OpenAI's context_length_exceeded:
    apps that trim the conversation on that code trimmed it, and were refused again."""
    with pytest.raises(LlmqError) as caught:
        _check(TenantLimits(tokens_per_minute=1_000), 1_001)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert caught.value.param == "max_tokens"
    assert not caught.value.retriable
    assert caught.value.retry_after_s is None
    assert caught.value.message == (
        "this request needs about 1001 tokens (prompt estimate + max_tokens) and tenant acme "
        "may use at most 1000 tokens per minute (tokens_per_minute); lower max_tokens or "
        "shorten the prompt"
    )
    assert not caplog.records


@pytest.mark.parametrize(
    ("limits", "why"),
    [
        (TenantLimits(requests_per_minute=7), "may make at most 7 requests per minute"),
        (TenantLimits(tokens_per_minute=700), "need about 808 tokens (101 each"),
    ],
)
def test_a_call_larger_than_the_bucket_is_refused_for_good(
    limits: TenantLimits, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Its choices are admitted together: n of them past a bucket never fit."""
    with pytest.raises(LlmqError) as caught:
        _check(limits, 101, ChoiceOf(call_id="call-1", n=8))
    assert caught.value.code is ErrorCode.INVALID_REQUEST and caught.value.param == "n"
    assert why in caught.value.message
    assert not caplog.records


def test_an_unlimited_tenant_is_admitted_without_redis(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _check(TenantLimits(budget_usd=1.0), 10**9)
    assert not caplog.records


class HungRedis:
    """A Redis that takes every script and never answers (stopped, or a black hole)."""

    def register_script(self, script: str) -> Callable[..., Awaitable[object]]:
        async def hangs(**_: object) -> object:
            return await asyncio.Event().wait()

        return hangs


def test_the_fail_open_warnings_name_a_hung_redis_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A check past its timeout raises TimeoutError, whose text is empty: the warnings read
    "admitting tenant acme unchecked: " and named nothing."""
    client = cast("aioredis.Redis", HungRedis())
    limits = TenantLimits(requests_per_minute=1, budget_usd=1.0)

    async def run() -> None:
        await RateLimiter(client, timeout_s=0.01).check(
            "acme", limits, 1, request_id="req-1", fingerprint="fp"
        )
        hold = Hold("req-1", 0.01, time.time() + 60)
        assert await Budgets(client, timeout_s=0.01).reserve("acme", limits, hold) is None

    with caplog.at_level(logging.WARNING):
        asyncio.run(run())
    assert [r.getMessage() for r in caplog.records] == [
        "rate limits unavailable, admitting tenant acme unchecked: TimeoutError()",
        "budgets unavailable, admitting tenant acme unchecked: TimeoutError()",
    ]
