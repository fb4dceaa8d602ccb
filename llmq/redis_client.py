"""The asyncio Redis client every llmq process makes: on a bounded pool. redis-py's default
pool opens a connection for each caller that finds none free and keeps it open, so one burst
(thousands of coalesced replies, a crowd of clients leaving the front door at once) left
thousands of connections open, and those it could not open in time failed."""

from __future__ import annotations

import redis.asyncio as aioredis

MAX_CONNECTIONS = 64
"""Connections one client opens at most. A round trip takes well under a millisecond, so 64
carry tens of thousands of calls a second; more would only cost Redis (10,000 clients at
most by default) and this process file descriptors."""


def bounded_client(
    url: str, socket_timeout: float, socket_connect_timeout: float | None = None
) -> aioredis.Redis:
    """A client of `url` whose callers past MAX_CONNECTIONS wait for a free connection, for
    `socket_timeout` at most (then redis.exceptions.ConnectionError, a RedisError).
    Closing the client closes its pool."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=socket_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
    )
    return aioredis.Redis.from_pool(pool)
