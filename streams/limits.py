"""What Kafka takes as one record on the topics the stream processor writes, learned from
the broker's refusals: where an operator set a topic's max.message.bytes below what llmq
sends, a record past it is refused as prompt_too_large (llmq.requests' own limit is the
clients'; see llmq/record_limits.py)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping

from aiokafka.errors import MessageSizeTooLargeError

from llmq.record_limits import BATCH_BYTES, RECORD_LIMIT, REREAD_S, record_size, refusal_after
from schemas.request import RecordRefusedError

Reader = Callable[[str], Awaitable[int | None]]
"""Reads a topic's limit from the brokers (None where they will not say)."""
SendOnce = Callable[[bool], Awaitable[None]]
"""Sends the record once (alone: in a batch of its own), raising the broker's
MessageSizeTooLargeError when it refuses the batch."""


class TopicLimits:
    """The limits of topics whose broker refused a record for its size. faust's producer is
    not idempotent, so a refusal fails nothing but the batch it was in; the broker weighs a
    batch whole, so records refused beside a larger one are sent once more, alone. A topic
    never refused costs one dict lookup a record."""

    def __init__(self, read: Reader, clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self._limits: dict[str, int] = {}
        """Limits below RECORD_LIMIT, by topic."""
        self._read_at: dict[str, float] = {}
        """When each topic's limit was last asked for, said or not."""
        self._reading: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes],
        once: SendOnce,
    ) -> None:
        """Send the record through `once`, alone where the topic's limit is below a batch;
        RecordRefusedError, unsent, past its known limit, or when the broker refuses it
        past the limit read then, or a second time."""
        limit = self._limits.get(topic)
        if limit is not None:
            limit = await self._checked(topic, _size(key, value, headers), limit)
        alone = limit is not None and limit < BATCH_BYTES
        again = False
        while True:
            try:
                await once(alone or again)
                return
            except MessageSizeTooLargeError:
                limit = await self._reread(topic, self._clock())
                size = _size(key, value, headers)
                refusal = refusal_after(topic, size, limit, again, refused=True)
                if refusal is not None:
                    raise refusal from None
                again = True

    async def _checked(self, topic: str, size: int, limit: int) -> int:
        """The limit a record of `size` bytes is held to, read again where the last read is
        REREAD_S old (a limit raised since takes it, and its records are batched again)."""
        now = self._clock()
        if now - self._read_at.get(topic, -math.inf) >= REREAD_S:
            limit = await self._reread(topic, now)
        if size > limit:
            raise RecordRefusedError(topic, size, limit)
        return limit

    async def _reread(self, topic: str, since: float) -> int:
        """The limit as the brokers said it at `since` or later (one read serves the records
        refused together, said or not); where they will not say, the last known."""
        async with self._reading[topic]:
            last = self._limits.get(topic, RECORD_LIMIT)
            if self._read_at.get(topic, -math.inf) >= since:
                return last
            started = self._clock()
            read = await self._read(topic)
            self._read_at[topic] = started
            limit = last if read is None else read
            if limit < RECORD_LIMIT:
                self._limits[topic] = limit
            else:  # raised again, or never lowered: no record's size is reckoned
                self._limits.pop(topic, None)
            return limit


def _size(key: bytes | None, value: bytes, headers: Mapping[str, bytes]) -> int:
    return record_size(key, value, list(headers.items()))
