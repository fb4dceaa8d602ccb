"""Notices when Redis loses its data while llmq runs (restarted without persistence, flushed,
replaced by an empty server): the token llmq set in llmq:epoch is gone or another. Nothing
else would tell: spend restarts from 0 and batches and results vanish silently. A failover
to a replica that lagged keeps the token (set once, long before), so the writes it lost go
unseen."""

from __future__ import annotations

import logging
import secrets

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.names import REDIS_EPOCH
from streams import metrics

log = logging.getLogger(__name__)

LOOK_S = 30.0
"""How often the stream processor looks at the token."""


class RedisEpoch:
    """Watches llmq:epoch for one process: reports each loss it sees once."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._seen: bytes | None = None

    async def look(self) -> bool:
        """Read the token (setting a new one if there is none) and say whether Redis lost its
        data since the last look: an ERROR and llmq_streams_redis_data_lost_total. The first
        token this process reads is no loss (a fresh Redis is none); a RedisError skips the
        look (Redis away is logged where it is used)."""
        try:
            token = await self._token()
        except RedisError:
            return False
        if token is None:  # flushed again between its set and read: the next look learns it
            return False
        lost = self._seen is not None and token != self._seen
        self._seen = token
        if lost:
            log.error(
                "Redis lost its data (%s is gone): tenants' spend this day and month restarts "
                "from 0, running batches, stored responses, results and cost history are gone; "
                "see deploy/k8s/README.md",
                REDIS_EPOCH,
            )
            metrics.REDIS_DATA_LOST.inc()
        return lost

    async def _token(self) -> bytes | None:
        """The token in Redis; a new one set there if there is none (a fresh one each time,
        so that this process's own, set again after a loss, differs from the one before)."""
        token: bytes | None = await self._redis.get(REDIS_EPOCH)
        if token is None:
            token = secrets.token_hex(16).encode()
            if not await self._redis.set(REDIS_EPOCH, token, nx=True):
                token = await self._redis.get(REDIS_EPOCH)  # another process's, set first
        return token
