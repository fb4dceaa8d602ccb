"""How often each work record started here or on another worker without an outcome: a
record whose generation kills its worker is redelivered to the next one, so without a
count it would take down every worker of the pool, forever.

The counts live in Redis, one hash per partition (offset -> starts): a start is counted
when the generation gets its turn, an outcome deletes the count, and a hand-back (a drain
that ran out of time) takes its start back. Only crashes leave starts behind. While Redis
is away every record reads as never started (nothing is held up; the bound is off until
it returns): a call waits at most TIMEOUT_S, and after a failure Redis is left alone for
AWAY_S, so an outage costs the worker almost nothing per record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from schemas.names import starts_key

log = logging.getLogger(__name__)

DEFAULT_MAX_STARTS = 3
"""Starts without an outcome before a record is dead-lettered (LLMQ_MAX_STARTS)."""
STARTS_TTL_S = 24 * 3600
"""A partition's counts are forgotten a day after its last start (a stack torn down)."""
TIMEOUT_S = 0.5
"""The longest a count may take: the generation waits on it."""
AWAY_S = 5.0
"""After a failed call, Redis is taken for away this long (no call waits on it)."""
WARN_EVERY_S = 60.0


class StartCounts(Protocol):
    """Start counts of work records, by topic, partition and offset."""

    async def count(self, topic: str, partition: int, offset: int) -> int:
        """The record's starts so far without an outcome: the workers it took down."""
        ...

    async def begin(self, topic: str, partition: int, offset: int) -> None:
        """Count a start of the record's generation."""
        ...

    async def end(self, topic: str, partition: int, offset: int) -> None:
        """The record has its outcome: its count goes."""
        ...

    async def hand_back(self, topic: str, partition: int, offset: int) -> None:
        """The record goes back unfinished, but not by a crash: its start does not count."""
        ...


class RedisStarts:
    """StartCounts in Redis, shared by every worker of the pool."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._away_until = float("-inf")
        self._warned_at = float("-inf")

    async def count(self, topic: str, partition: int, offset: int) -> int:
        """The record's starts so far without an outcome (0 while Redis is away)."""
        done = await self._send(lambda pipe: pipe.hget(starts_key(topic, partition), str(offset)))
        return 0 if done is None or done[0] is None else int(done[0])

    async def begin(self, topic: str, partition: int, offset: int) -> None:
        """Count a start of the record's generation."""
        key = starts_key(topic, partition)
        await self._send(
            lambda pipe: (pipe.hincrby(key, str(offset), 1), pipe.expire(key, STARTS_TTL_S))
        )

    async def end(self, topic: str, partition: int, offset: int) -> None:
        """The record has its outcome: its count goes."""
        await self._send(lambda pipe: pipe.hdel(starts_key(topic, partition), str(offset)))

    async def hand_back(self, topic: str, partition: int, offset: int) -> None:
        """The record goes back unfinished, but not by a crash: its start does not count."""
        await self._send(lambda pipe: pipe.hincrby(starts_key(topic, partition), str(offset), -1))

    async def _send(self, commands: Callable[[Pipeline], object]) -> list[Any] | None:
        """Run the commands in one round trip; None (and a warning) while Redis is away."""
        if time.monotonic() < self._away_until:
            return None
        pipe = self._redis.pipeline(transaction=False)
        commands(pipe)
        try:
            async with asyncio.timeout(TIMEOUT_S):
                return list(await pipe.execute())
        except (RedisError, OSError, TimeoutError) as exc:
            self._away_until = time.monotonic() + AWAY_S
            self._warn(exc)
            return None

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "cannot count starts in Redis (%r): a record that kills its worker is "
                "redelivered without bound until Redis is back",
                exc,
            )
