"""The semantic cache's age bound against a real redis-server: a write trims its scope's
entries older than the TTL, and a process that reads an older entry does not answer with
it. Old entries are written with ids dated in the past, as the cache would have written
them then."""

from __future__ import annotations

import time
from typing import cast

import pytest
import redis
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from schemas.names import semantic_stream_key
from streams.semantic import SemanticCache
from tests.integration.helpers import run_async
from tests.unit.test_semantic_robust import QUESTION, Embedder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TTL_S = 60
SECRET = "My SSN is 123-45-6789, what do I do?"


def _written(client: redis.Redis, scope: str, text: str, age_s: int) -> int:
    """Add an entry as the cache does, `age_s` ago; the time (ms) of its id."""
    written_ms = int(time.time() * 1000) - age_s * 1000
    vector = Embedder().embed([text])[0].astype("<f4").tobytes()
    fields: dict[FieldT, EncodableT] = {"fp": f"fp-{age_s}", "t": text, "v": vector}
    client.xadd(semantic_stream_key(scope), fields, id=f"{written_ms}-0")
    return written_ms


def _cache(client: aioredis.Redis) -> SemanticCache:
    return SemanticCache(client, Embedder(), 0.75, ttl_s=TTL_S)


def _texts(client: redis.Redis, scope: str) -> list[bytes]:
    entries = cast(
        "list[tuple[bytes, dict[bytes, bytes]]]", client.xrange(semantic_stream_key(scope))
    )
    return [fields[b"t"] for _, fields in entries]


def test_a_write_trims_the_entries_older_than_the_ttl(redis_port: int, sync: redis.Redis) -> None:
    _written(sync, "A", SECRET, age_s=TTL_S + 5)

    async def add(client: aioredis.Redis) -> None:
        await _cache(client).add("A", "Is it raining?", "fp-rain")

    run_async(redis_port, add)
    assert _texts(sync, "A") == [b"Is it raining?"]
    assert 0 < cast("int", sync.pttl(semantic_stream_key("A"))) <= TTL_S * 1000


def test_an_entry_read_older_than_the_ttl_does_not_answer(
    redis_port: int, sync: redis.Redis
) -> None:
    _written(sync, "fresh", QUESTION, age_s=TTL_S - 10)
    _written(sync, "old", QUESTION, age_s=TTL_S + 5)

    async def hits(client: aioredis.Redis) -> list[bool]:
        cache = _cache(client)
        return [await cache.lookup(scope, QUESTION) is not None for scope in ("fresh", "old")]

    assert run_async(redis_port, hits) == [True, False]
