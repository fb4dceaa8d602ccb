"""No question older than the cache's TTL stays in its scope's Redis stream past the next
write, nor answers from a process's mirror of it. The clock is the test's: entries age by
moving it, not by waiting."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import redis.asyncio as aioredis

from schemas.names import semantic_stream_key
from streams.semantic import SemanticCache
from streams.semantic_index import ScopeMirror
from tests.unit.test_semantic_robust import QUESTION, Embedder, StreamRedis

TTL_S = 3600
SCOPE = "A"
KEY = semantic_stream_key(SCOPE)
SECRET = "My SSN is 123-45-6789, what do I do?"


class Clock:
    """Seconds since the epoch, moved on by the test."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _cache(redis: StreamRedis, clock: Clock, **options: Any) -> SemanticCache:
    client = cast("aioredis.Redis", redis)
    return SemanticCache(client, Embedder(), 0.75, ttl_s=TTL_S, clock=clock, **options)


def _texts(redis: StreamRedis) -> list[bytes]:
    return [fields[b"t"] for _, fields in redis.streams.get(KEY, [])]


def test_an_entry_older_than_the_ttl_leaves_the_stream_at_the_next_write() -> None:
    clock = Clock()
    redis = StreamRedis(clock)
    cache = _cache(redis, clock)
    written = clock.now

    async def run() -> list[list[bytes]]:
        seen = []
        for at, text in [(0, SECRET), (TTL_S, "Is it raining?"), (TTL_S + 1, "Is it sunny?")]:
            clock.now = written + at
            await cache.add(SCOPE, text, f"fp-{at}")
            seen.append(_texts(redis))
        return seen

    assert asyncio.run(run()) == [
        [SECRET.encode()],
        [SECRET.encode(), b"Is it raining?"],  # exactly TTL_S old: still kept
        [b"Is it raining?", b"Is it sunny?"],
    ]


def test_a_mirror_stops_answering_with_an_entry_older_than_the_ttl() -> None:
    clock = Clock()
    redis = StreamRedis(clock)
    cache = _cache(redis, clock)
    written = clock.now

    async def hits(cache: SemanticCache, age_s: float) -> bool:
        clock.now = written + age_s
        return await cache.lookup(SCOPE, QUESTION) is not None

    async def run() -> tuple[bool, bool, bool, bool]:
        await cache.lookup(SCOPE, QUESTION)  # mirrored, so the addition goes in at once
        await cache.add(SCOPE, QUESTION, "fp-egg")
        fresh = await hits(cache, TTL_S)
        expired = await hits(cache, TTL_S + 1)
        # Another process reading the stream (no write has trimmed it since) does the same.
        other = _cache(redis, clock)
        return fresh, expired, await hits(other, TTL_S), await hits(other, TTL_S + 1)

    assert asyncio.run(run()) == (True, False, True, False)


def test_expired_entries_leave_a_mirror_added_to_and_free_the_room_they_held() -> None:
    clock = Clock()
    redis = StreamRedis(clock)
    cache = _cache(redis, clock, max_entries=2, max_mirrored=2)

    async def run() -> bool:
        await cache.lookup(SCOPE, QUESTION)
        await cache.add(SCOPE, "Is it raining?", "fp-rain")
        await cache.add(SCOPE, "Is it sunny?", "fp-sun")
        clock.now += TTL_S + 1
        await cache.add(SCOPE, "Is it windy?", "fp-wind")  # one mirrored now, not two
        await cache.add("B", QUESTION, "fp-egg")  # B's stream: one entry, room for it
        return await cache.lookup("B", QUESTION) is not None

    assert asyncio.run(run()), "scope B was refused for room held by expired entries"


def test_a_mirror_expires_the_entries_written_before_a_time_oldest_first() -> None:
    embedder = Embedder()
    mirror = ScopeMirror(capacity=10, dimensions=embedder.dimensions)
    for fingerprint, written_ms in [("a", 1_000), ("b", 2_000), ("c", 3_000), ("a", 4_000)]:
        mirror.put(fingerprint, fingerprint, embedder.embed([fingerprint])[0], written_ms)
    mirror.expire(3_000)  # "a" was written again: the newest
    everything = mirror.search(embedder.embed(["a"])[0], -1.0, 10)
    assert sorted(fp for fp, _, _ in everything) == ["a", "c"]
    mirror.expire(4_001)
    assert len(mirror) == 0
