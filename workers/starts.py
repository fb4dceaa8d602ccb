"""How often each work record started here or on another worker without an outcome: a
record whose generation kills its worker is redelivered to the next one, so without a
count it would take down every worker of the pool, forever.

The counts live in Redis, one set per record of its starts' ids: a start is added when
the generation gets its turn, an outcome deletes the set, and a hand-back (a drain or a
rebalance that ran out of time) removes its own id. Only crashes leave starts behind.
Every call is idempotent, so one that failed is owed: it is sent again before the next
call, and a Redis that missed a hand-back or an outcome never takes a record for a crash
loop. While Redis is away every record reads as never started (nothing is held up; the
bound is off until it returns): a call waits at most `timeout_s`, and after a failure
Redis is left alone for `away_s`, so an outage costs the worker almost nothing per record.

An outcome also marks the record answered (by its correlation id) for ANSWERED_TTL_S: a
worker commits a partition only up to its oldest unfinished record, so when a rebalance
moves the partition, records answered past that point come to the next owner, which skips
them instead of generating and answering them a second time.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from schemas.names import answered_key, starts_key

log = logging.getLogger(__name__)

DEFAULT_MAX_STARTS = 3
"""Starts without an outcome before a record is dead-lettered (LLMQ_MAX_STARTS)."""
STARTS_TTL_S = 24 * 3600
"""A record's starts are forgotten a day after its last start (a stack torn down)."""
ANSWERED_TTL_S = 15 * 60
"""How long a record's answered mark is kept: past any rebalance's hand-over (a generation
runs up to its model's timeout_s, a new owner loads in minutes), and short enough that a
busy pool's marks stay small in Redis (about 100 bytes a record: 90 MB at 1,000 a second).
A record redelivered later is generated again, and answered with the first stored result."""
TIMEOUT_S = 2.0
"""The longest a call may take: the generation waits on it."""
AWAY_S = 5.0
"""After a failed call, Redis is taken for away this long (no call waits on it)."""
OWED_MAX = 100_000
"""Corrections kept for a Redis that is away; beyond, the oldest are dropped (and said)."""
FLUSH_MAX = 1_000
"""Owed corrections sent along with one call."""
WARN_EVERY_S = 60.0

Command = Callable[[Pipeline], object]


class StartCounts(Protocol):
    """Start counts of work records, by topic, partition and offset."""

    async def count(self, topic: str, partition: int, offset: int) -> int:
        """The record's starts so far without an outcome: the workers it took down."""
        ...

    async def begin(self, topic: str, partition: int, offset: int) -> None:
        """Count a start of the record's generation."""
        ...

    async def answered(self, topic: str, partition: int, offset: int, correlation_id: str) -> bool:
        """Whether the record's outcome was published already, here or before a rebalance."""
        ...

    async def end(self, topic: str, partition: int, offset: int, correlation_id: str) -> None:
        """The record has its outcome: its count goes, and it is marked answered."""
        ...

    async def hand_back(self, topic: str, partition: int, offset: int) -> None:
        """The record goes back unfinished, but not by a crash: its start does not count."""
        ...


class RedisStarts:
    """StartCounts in Redis, shared by every worker of the pool."""

    def __init__(
        self, redis: aioredis.Redis, timeout_s: float = TIMEOUT_S, away_s: float = AWAY_S
    ) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._away_s = away_s
        self._mine: dict[str, str] = {}
        """This worker's start id of each record it is generating, by key."""
        self._owed: deque[Command] = deque()
        self._away_until = float("-inf")
        self._warned_at = float("-inf")

    async def count(self, topic: str, partition: int, offset: int) -> int:
        """The record's starts so far without an outcome (0 while Redis is away)."""
        done = await self._send(lambda pipe: pipe.scard(starts_key(topic, partition, offset)))
        return 0 if done is None else int(done[0])

    async def begin(self, topic: str, partition: int, offset: int) -> None:
        """Count a start of the record's generation (not counted while Redis is away)."""
        key = starts_key(topic, partition, offset)
        start = self._mine[key] = uuid.uuid4().hex
        await self._send(lambda pipe: (pipe.sadd(key, start), pipe.expire(key, STARTS_TTL_S)))

    async def answered(self, topic: str, partition: int, offset: int, correlation_id: str) -> bool:
        """Whether the record's outcome was published already (False while Redis is away)."""
        done = await self._send(lambda pipe: pipe.get(answered_key(topic, partition, offset)))
        mark = None if done is None else done[0]
        return mark is not None and _text(mark) == correlation_id

    async def end(self, topic: str, partition: int, offset: int, correlation_id: str) -> None:
        """The record has its outcome: its count goes, and it is marked answered."""
        key = starts_key(topic, partition, offset)
        self._mine.pop(key, None)
        mark = answered_key(topic, partition, offset)
        await self._send(
            lambda pipe: (pipe.delete(key), pipe.set(mark, correlation_id, ex=ANSWERED_TTL_S)),
            owed=True,
        )

    async def hand_back(self, topic: str, partition: int, offset: int) -> None:
        """The record goes back unfinished, but not by a crash: its start does not count."""
        key = starts_key(topic, partition, offset)
        start = self._mine.pop(key, None)
        if start is not None:
            await self._send(lambda pipe: pipe.srem(key, start), owed=True)

    async def _send(self, command: Command, owed: bool = False) -> list[Any] | None:
        """Run what is owed, then `command`, in one round trip; `command`'s replies, or
        None (and a warning) while Redis is away, when an `owed` command is kept for later."""
        if time.monotonic() < self._away_until:
            self._owe(command, owed)
            return None
        pipe = self._redis.pipeline(transaction=False)
        earlier = [self._owed.popleft() for _ in range(min(FLUSH_MAX, len(self._owed)))]
        for correction in earlier:
            correction(pipe)
        first = len(pipe)
        command(pipe)
        try:
            async with asyncio.timeout(self._timeout_s):
                replies = list(await pipe.execute())
        except (RedisError, OSError, TimeoutError) as exc:
            self._away_until = time.monotonic() + self._away_s
            self._owed.extendleft(reversed(earlier))
            self._owe(command, owed)
            self._warn(exc)
            return None
        return replies[first:]

    def _owe(self, command: Command, owed: bool) -> None:
        if not owed:
            return
        if len(self._owed) >= OWED_MAX:
            self._owed.popleft()
            log.warning(
                "more than %d start corrections owed to Redis: dropped the oldest", OWED_MAX
            )
        self._owed.append(command)

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "cannot count starts in Redis (%r): a record that kills its worker is "
                "redelivered without bound until Redis is back",
                exc,
            )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
