"""A hung embedder: the lookups given up on leave the queue, and the next lookups miss at
once, without it, until it returns (docs/semantic-cache.md, "Failure")."""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from streams.embed_queue import EmbedQueue
from streams.semantic import SemanticCache, SemanticHit
from streams.semantic_index import Vector
from tests.unit.test_semantic_robust import QUESTION, Embedder, StreamRedis

WAIT_S = 10.0
"""Bounds a wait that ends at once when the code under test is right."""
GIVE_UP_S = 0.01
"""The lookups' timeout here: the hung model never answers within it, nor at all."""
LOOKUPS = 20


class Model(Embedder):
    """The hanging Embedder, recording the texts it was called with."""

    def __init__(self) -> None:
        super().__init__(hang=True)
        self.calls: list[str] = []

    def embed(self, texts: list[str]) -> Vector:
        self.calls.extend(texts)
        return super().embed(texts)


def _skipped() -> float:
    return REGISTRY.get_sample_value("llmq_streams_semantic_skipped_total") or 0.0


async def _stored(model: Model) -> SemanticCache:
    """A cache whose scope "A" holds QUESTION, embedded before the model hangs."""
    redis = cast("aioredis.Redis", StreamRedis())
    cache = SemanticCache(redis, model, 0.75, lookup_timeout_s=GIVE_UP_S)
    model.hang = False
    await cache.add("A", QUESTION, "fp-egg")
    model.hang = True
    return cache


def test_lookups_given_up_on_leave_the_line_however_many_while_the_model_hangs() -> None:
    model = Model()

    async def go() -> int:
        queue = EmbedQueue(model)
        try:
            for i in range(LOOKUPS):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(GIVE_UP_S):
                        await queue.embed(f"question {i}", urgent=True)
            return len(queue._urgent)  # the lookups' line
        finally:
            model.release.set()

    assert asyncio.run(go()) == 0, "nobody waits for them"
    assert model.calls == ["question 0"], "the model was asked once, and is still inside"


def test_after_a_lookup_gave_up_on_the_embedder_the_next_ones_miss_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = Model()
    before = _skipped()

    async def go() -> list[SemanticHit | None]:
        cache = await _stored(model)
        try:
            found = [await cache.lookup("A", "How can I boil an egg?")]  # times out
            for i in range(LOOKUPS):
                found.append(await cache.lookup("A", f"How can I boil {i} eggs?"))
            assert not model.release.is_set(), "they returned while the model hung"
            return found
        finally:
            model.release.set()

    assert asyncio.run(go()) == [None] * (LOOKUPS + 1)
    assert model.calls == [QUESTION, "How can I boil an egg?"], "not asked again"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("slower than" in m for m in messages) == 1, "no other lookup waited its timeout"
    assert sum("lookups miss without it" in m for m in messages) == 1, "said once"
    assert _skipped() - before == LOOKUPS


def test_once_the_call_given_up_on_returns_lookups_ask_the_embedder_again() -> None:
    model = Model()

    async def go() -> SemanticHit | None:
        cache = await _stored(model)
        await cache.lookup("A", "How can I boil an egg?")  # times out
        assert await cache.lookup("A", "How can I boil eggs?") is None, "skipped meanwhile"
        model.hang = False
        model.release.set()
        # Joins the call given up on: back once it has returned.
        async with asyncio.timeout(WAIT_S):
            await cache._vectors.embed("How can I boil an egg?", urgent=True)
        hit = await cache.lookup("A", QUESTION)
        await cache.lookup("A", "How do I fry an egg?")
        return hit

    hit = asyncio.run(go())
    assert hit is not None and hit.fingerprint == "fp-egg"
    assert model.calls[-1] == "How do I fry an egg?", "the embedder is asked again"


def test_a_lookup_that_gave_up_behind_another_call_says_nothing_of_that_call() -> None:
    """A slow model, not a hung one: a lookup queued behind the call in progress gives up,
    while that call's own caller still waits. Taking that for a hang would skip lookups
    (and say the embedder hangs) whenever lookups queue."""
    model = Model()

    async def go() -> tuple[bool, bool]:
        queue = EmbedQueue(model)
        try:
            first = asyncio.create_task(queue.embed("the call in progress", urgent=True))
            async with asyncio.timeout(WAIT_S):
                while not model.calls:  # noqa: ASYNC110 -- the model runs in a thread
                    await asyncio.sleep(0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GIVE_UP_S):
                    await queue.embed("queued behind it", urgent=True)
            behind = queue.stuck
            first.cancel()  # now the caller of the call in progress gives up on it
            with contextlib.suppress(asyncio.CancelledError):
                await first
            return behind, queue.stuck
        finally:
            model.release.set()

    assert asyncio.run(go()) == (False, True)
