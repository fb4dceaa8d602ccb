"""Speculative streamed requests: an engine claims one before its first tokens go out, so
that its reader never gets both those tokens and the semantic cache's answer (the stream
processor claims it before it answers from the cache; schemas.work.WorkItem.speculative)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.names import claim_key
from schemas.stream import Cancel
from schemas.work import CLAIM_ENGINE, CLAIM_TTL_S
from workers.cancels import Cancellations

log = logging.getLogger(__name__)

Claim = Callable[[str, str], Awaitable[bool]]
"""Claims.first, by tenant and correlation_id: whether this engine's tokens may go out."""
TIMEOUT_S = 2.0
"""The longest a claim may take: the generation's first tokens wait on it."""


class Claims:
    """Claims speculative streamed requests in Redis for this worker's generations."""

    def __init__(self, client: aioredis.Redis, cancellations: Cancellations) -> None:
        self._redis = client
        self._cancellations = cancellations

    async def first(self, tenant: str, correlation_id: str) -> bool:
        """True: this generation answers, its tokens may go out (an engine's earlier start of
        it claimed it too). False: the cache answered it; the generation is cancelled as
        answered and stops at its next step. With Redis away the engine answers."""
        try:
            async with asyncio.timeout(TIMEOUT_S):
                before = await self._redis.set(
                    claim_key(tenant, correlation_id),
                    CLAIM_ENGINE,
                    ex=CLAIM_TTL_S,
                    nx=True,
                    get=True,
                )
        except (RedisError, TimeoutError) as exc:
            log.warning("cannot claim %s/%s, streaming it: %r", tenant, correlation_id, exc)
            return True
        if before is None or before == CLAIM_ENGINE.encode():
            return True
        self._cancellations.add(Cancel(correlation_id=correlation_id, tenant=tenant, answered=True))
        return False
