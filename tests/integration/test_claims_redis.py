"""Claims of speculative streamed requests against a real redis-server: whoever claims first
answers (the semantic cache or an engine), each side may claim again (a redelivery), and
with Redis away neither claims (the engine then answers, whole)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from llmq.pipelined import Pipelined
from schemas.names import claim_key
from schemas.work import CLAIM_TTL_S
from streams.store import RedisStore
from tools.stack.ports import free_block
from workers.claims import Claims

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _sides(client: aioredis.Redis) -> tuple[RedisStore, Claims]:
    return RedisStore(Pipelined(client), cache_ttl_s=60, result_ttl_s=60), Claims(client)


def test_the_first_claim_wins_and_each_side_may_claim_again(redis_port: int) -> None:
    async def main() -> None:
        client = aioredis.Redis(port=redis_port)
        store, claims = _sides(client)
        try:
            # The engine first: its tokens go out, the cache's hit is dropped.
            assert await claims.first("t", "engine-first")
            assert await claims.first("t", "engine-first"), "a redelivered record claims again"
            assert not await store.claim("t", "engine-first")
            # The cache first: the engine streams nothing.
            assert await store.claim("t", "cache-first")
            assert await store.claim("t", "cache-first"), "a redelivered request claims again"
            assert not await claims.first("t", "cache-first")
            # Per tenant, and forgotten after a while.
            assert await store.claim("other", "engine-first")
            ttl = await client.ttl(claim_key("t", "cache-first"))
            assert 0 < ttl <= CLAIM_TTL_S
        finally:
            await client.aclose()

    asyncio.run(main())


def test_with_redis_away_neither_the_cache_nor_a_stream_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> tuple[bool, bool]:
        nobody = free_block(1)
        client = aioredis.Redis(port=nobody, socket_connect_timeout=0.5, socket_timeout=0.5)
        store, claims = _sides(client)
        try:
            return await claims.first("t", "c"), await store.claim("t", "c")
        finally:
            await client.aclose()

    with caplog.at_level(logging.WARNING):
        assert asyncio.run(main()) == (False, False)
    assert [r.name for r in caplog.records] == ["workers.claims", "streams.store"]
