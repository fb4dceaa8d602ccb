"""OpenAIEngine's own retries against the request's deadline: a wait that would end too near
it is not taken, the failure goes back at once as retried, so the stream processor falls
back to the next model while that can still answer (an expired request is not routed)."""

from __future__ import annotations

import asyncio
import time

import pytest

from schemas.errors import ErrorCode
from schemas.retry import RetryPolicy
from tests.unit.openai_server import FAST, collect, engine, failure, ok, running, status

pytestmark = pytest.mark.timeout(60)

POLICY = RetryPolicy(max_attempts=4, budget_s=30.0)
"""The catalog's defaults: 4 attempts within 30 s, so a Retry-After of 20 s is honoured."""
BUSY = status(503, "overloaded", {"Retry-After": "20"})


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The engine's waits, recorded rather than slept (aiohttp's sleep(0) yields are left
    out), so a 20 s Retry-After costs no time."""
    real = asyncio.sleep
    seen: list[float] = []

    async def sleep(delay: float, result: object = None) -> object:
        if delay > 0:
            seen.append(delay)
        return await real(0, result)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return seen


def test_a_retry_after_past_the_deadline_fails_at_once_as_retried(waits: list[float]) -> None:
    async def scenario() -> None:
        deadline = time.time() + 3.0
        async with running(BUSY, ok()) as (server, url):
            error = await failure(engine(url, retry=POLICY), deadline=deadline)
        assert error.code is ErrorCode.ENGINE_ERROR and error.retriable
        assert error.retried  # the stream processor falls back instead of retrying
        assert "before the deadline" in error.message and "HTTP 503" in error.message
        assert len(server.bodies) == 1
        assert waits == []

    asyncio.run(scenario())


def test_a_wait_ending_within_a_second_of_the_deadline_is_not_taken(waits: list[float]) -> None:
    async def scenario() -> None:
        deadline = time.time() + 20.5  # the 20 s wait would leave under 1 s to fall back
        async with running(BUSY, ok()) as (server, url):
            error = await failure(engine(url, retry=POLICY), deadline=deadline)
        assert error.retried
        assert len(server.bodies) == 1
        assert waits == []

    asyncio.run(scenario())


def test_a_first_failure_with_only_backoff_left_is_marked_retried(waits: list[float]) -> None:
    async def scenario() -> None:
        deadline = time.time() + 1.0  # any backoff ends within the margin
        async with running(status(500), ok()) as (server, url):
            error = await failure(engine(url, retry=POLICY), deadline=deadline)
        assert error.retried and error.retry_after_s is None
        assert len(server.bodies) == 1
        assert waits == []

    asyncio.run(scenario())


def test_a_short_backoff_well_within_the_deadline_is_still_retried(waits: list[float]) -> None:
    async def scenario() -> None:
        deadline = time.time() + 60.0
        async with running(status(500), status(502), ok()) as (server, url):
            steps = await collect(engine(url, retry=FAST), deadline=deadline)
        assert "".join(s.text for s in steps) == "Hi there"
        assert len(server.bodies) == 3
        assert len(waits) == 2

    asyncio.run(scenario())


def test_a_retry_after_that_leaves_time_to_fall_back_is_honoured(waits: list[float]) -> None:
    async def scenario() -> None:
        deadline = time.time() + 60.0
        async with running(BUSY, ok()) as (server, url):
            steps = await collect(engine(url, retry=POLICY), deadline=deadline)
        assert "".join(s.text for s in steps) == "Hi there"
        assert len(server.bodies) == 2
        [wait] = waits
        assert 20.25 <= wait <= 20.5  # Retry-After, then the first backoff (0.5 s, jittered)

    asyncio.run(scenario())


def test_without_a_deadline_the_retries_are_as_before(waits: list[float]) -> None:
    async def scenario() -> None:
        async with running(BUSY, ok()) as (server, url):
            steps = await collect(engine(url, retry=POLICY))
        assert "".join(s.text for s in steps) == "Hi there"
        assert len(server.bodies) == 2
        [wait] = waits
        assert 20.25 <= wait <= 20.5  # Retry-After, then the first backoff (0.5 s, jittered)

    asyncio.run(scenario())
