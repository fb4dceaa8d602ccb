"""What Kafka takes as one record on the topics the stream processor writes, learned from
the broker's refusals: where an operator set a topic's max.message.bytes below what llmq
sends, a record past it is refused as prompt_too_large (llmq.requests' own limit is the
clients'; see llmq/record_limits.py)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping

from llmq.record_limits import RECORD_LIMIT, REREAD_S, record_size, refusal_after
from schemas.request import RecordRefusedError

Reader = Callable[[str], Awaitable[int | None]]
"""Reads a topic's limit from the brokers (None where they will not say)."""


class TopicLimits:
    """The limits of topics whose broker refused a record for its size. faust's producer is
    not idempotent, so a refusal breaks nothing but the batch it was in: records beside the
    refused one are sent once more. A topic never refused costs nothing per record."""

    def __init__(self, read: Reader, clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self._known: dict[str, tuple[int, float]] = {}
        """topic -> (its limit, when it was read), for limits below RECORD_LIMIT"""
        self._reading = asyncio.Lock()

    async def check(
        self, topic: str, key: bytes | None, value: bytes, headers: Mapping[str, bytes]
    ) -> None:
        """RecordRefusedError, unsent, for a record past `topic`'s known limit, read again at
        most every REREAD_S first (a limit raised since takes it)."""
        known = self._known.get(topic)
        if known is None:
            return
        size = _size(key, value, headers)
        limit, read_at = known
        now = self._clock()
        if size > limit and now - read_at >= REREAD_S:
            limit = await self._reread(topic, now)
        if size > limit:
            raise RecordRefusedError(topic, size, limit)

    async def refused(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes],
        again: bool,
    ) -> RecordRefusedError | None:
        """After the broker refused the batch holding this record (on its second try when
        `again`): the refusal to raise where the record is past the limit read now, or was
        refused twice; None: it was refused beside a larger one, so send it once more."""
        limit = await self._reread(topic, self._clock())
        return refusal_after(topic, _size(key, value, headers), limit, again, refused=True)

    async def _reread(self, topic: str, since: float) -> int:
        """The limit as the brokers said it at `since` or later (one read serves the records
        refused together); where they will not say, the last known."""
        async with self._reading:
            last, read_at = self._known.get(topic, (RECORD_LIMIT, -math.inf))
            if read_at >= since:
                return last
            read = await self._read(topic)
            limit = last if read is None else read
            if limit < RECORD_LIMIT:
                self._known[topic] = (limit, self._clock())
            else:  # raised again, or never lowered: no record's size is reckoned
                self._known.pop(topic, None)
            return limit


def _size(key: bytes | None, value: bytes, headers: Mapping[str, bytes]) -> int:
    return record_size(key, value, list(headers.items()))
