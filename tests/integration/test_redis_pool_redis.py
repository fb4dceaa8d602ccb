"""Every service's asyncio Redis client sits on a bounded pool (llmq.redis_client): a burst
of calls waits for a free connection instead of opening one each and keeping it. Against a
throwaway redis-server of this module's own."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from llmq.redis_client import MAX_CONNECTIONS, bounded_client

CALLS = 1000

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def _connected(watcher: aioredis.Redis) -> int:
    """Connections the server has, the watcher's own left out."""
    info = await watcher.info("clients")
    return int(info["connected_clients"]) - 1


def test_a_burst_of_calls_opens_at_most_the_pool_and_closing_the_client_closes_them(
    redis_port: int,
) -> None:
    async def burst() -> tuple[list[int], int, int]:
        watcher = aioredis.Redis(port=redis_port)
        client = bounded_client(f"redis://127.0.0.1:{redis_port}/0", socket_timeout=30)
        try:
            counts = await asyncio.gather(*(client.incr("burst") for _ in range(CALLS)))
            opened = await _connected(watcher)  # an idle pooled connection stays open
        finally:
            await client.aclose()
        left = await _connected(watcher)
        for _ in range(100):  # the server sees each close within a moment
            if left == 0:
                break
            await asyncio.sleep(0.05)
            left = await _connected(watcher)
        await watcher.aclose()
        return counts, opened, left

    counts, opened, left = asyncio.run(burst())
    assert sorted(counts) == list(range(1, CALLS + 1)), "every call succeeded"
    assert 1 < opened <= MAX_CONNECTIONS
    assert left == 0, "closing the client closed its pool's connections"
