"""A sweep of a tenant's batch index is housekeeping after a write: Redis failing in it
fails not the upload or batch it follows (tests/integration/test_batch_index_redis.py
runs the sweep on a real Redis)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.batch.store import BatchStore


class Failing(BatchStore):
    async def _swept_once(self, tenant: str, kind: str) -> None:
        raise RedisConnectionError("redis away")


def test_a_sweep_redis_fails_in_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    store = Failing(aioredis.Redis(port=1), 3600)
    with caplog.at_level(logging.WARNING, logger="gateway.batch.store"):
        asyncio.run(store._sweep("acme", "files"))
    assert "cannot sweep acme's files index now" in caplog.text
