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
from schemas.work import CLAIM_ENGINE, CLAIM_TTL_S

log = logging.getLogger(__name__)

Claim = Callable[[str, str], Awaitable[bool]]
"""Claims.first, by tenant and correlation_id: whether this engine's tokens may go out."""
TIMEOUT_S = 2.0
"""The longest a claim may take: the generation's first tokens wait on it."""


class Claims:
    """Claims speculative streamed requests in Redis for this worker's generations."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def first(self, tenant: str, correlation_id: str) -> bool:
        """True when this generation may stream: it claimed the request (or an earlier start
        of it did). Otherwise (the cache claimed it, or the claim is uncertain: Redis away or
        slow) it streams nothing and answers with its whole result, unless the cache's
        cancellation stops it first: a reader never gets pieces from both."""
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
            log.warning(
                "cannot claim %s/%s: its answer comes whole, not streamed: %r",
                tenant,
                correlation_id,
                exc,
            )
            return False
        return before is None or before == CLAIM_ENGINE.encode()
