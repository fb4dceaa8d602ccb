"""A batch that Redis loses (FLUSHALL, a restart without persistence, eviction) while the
runner drives it: the runner's writes after the loss bring none of its keys back (they would
have no expiry, and nothing would end them), and the runner drops it, with a warning."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.batch.runner import Runner
from gateway.batch.store import BatchStore, Outcome
from llmq.throttle import APART
from schemas.names import BATCHES_ACTIVE, batch_keys
from tests.integration.batch_inputs import CATALOG, TENANT, Recorder, batch, line
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]


class LostWhileRead(BatchStore):
    """Redis loses everything but the set of active batches (it has no expiry: eviction of
    keys with one spares it) once validation has read the batch's first page of lines."""

    async def name_lines(
        self,
        batch_id: str,
        custom_ids: Mapping[int, str],
        asked: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        await self._redis.flushdb()
        await self._redis.sadd(BATCHES_ACTIVE, batch_id)  # type: ignore[misc]
        await super().name_lines(batch_id, custom_ids, asked)


async def _endless(client: aioredis.Redis) -> list[bytes]:
    """The keys without an expiry."""
    return sorted([key for key in await client.keys("*") if await client.ttl(key) == -1])


def _said(caplog: pytest.LogCaptureFixture, batch_id: str) -> list[tuple[str, bool]]:
    """What was logged of the batch: (level, with a traceback); each told apart by the
    batch (another batch's notice does not hold it back)."""
    found = [r for r in caplog.records if batch_id in r.getMessage()]
    assert {getattr(r, APART, None) for r in found} <= {(batch_id,)}
    return [(r.levelname, r.exc_info is not None) for r in found]


def test_a_batch_lost_mid_step_comes_not_back_and_is_dropped(
    redis_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(client: aioredis.Redis) -> None:
        store = LostWhileRead(client, 3600)
        runner = Runner(store, Recorder(), CATALOG, "door-1")
        batch_id = await batch(store, [line(n) for n in range(3)])
        with caplog.at_level(logging.WARNING):
            await runner.tick()  # lost as it validates: it names lines, fails it (input gone)
            assert await _endless(client) == [BATCHES_ACTIVE.encode()]
            assert await store.batch(batch_id, TENANT) is None  # 404
            await runner.tick()
        assert await store.active() == []
        assert await client.keys("*") == []
        assert _said(caplog, batch_id) == [("WARNING", False)]

    run_async(redis_port, body)


def test_what_a_loss_left_of_a_batch_is_dropped_without_a_traceback(
    redis_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Fields an older llmq wrote after the loss: a hash without its status, no expiry."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        runner = Runner(store, Recorder(), CATALOG, "door-1")
        batch_id = await batch(store, [line(n) for n in range(3)])
        keys = batch_keys(batch_id)
        await client.flushdb()
        await client.hset(keys["batch"], mapping={"total": 3, "model": CATALOG.default})  # type: ignore[misc]
        await client.hset(keys["ids"], mapping={"0": "c0"})  # type: ignore[misc]
        await client.sadd(BATCHES_ACTIVE, batch_id)  # type: ignore[misc]
        with caplog.at_level(logging.WARNING):
            await runner.tick()
        assert await store.active() == []
        assert await client.keys("*") == []
        assert _said(caplog, batch_id) == [("WARNING", False)]

    run_async(redis_port, body)


def test_the_parts_a_running_batch_writes_expire_with_it(redis_port: int) -> None:
    """Its lines' custom_ids, outcomes, attempts and retries: none outlives the batch, even
    if no runner ends it (Redis lost the set of active batches)."""

    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        runner = Runner(store, recorder, CATALOG, "door-1")
        batch_id = await batch(store, [line(n) for n in range(3)])
        await runner.tick()  # validating -> in_progress
        await runner.tick()  # the lines are sent
        assert len(recorder.sent) == 3
        outcomes = [
            Outcome(0, 0, "output", {"custom_id": "c0"}),
            Outcome(1, 0, "error", {"custom_id": "c1"}),
            Outcome(2, 0, "retry", {}, retry_at=time.time() + 600),
        ]
        assert await store.record(batch_id, TENANT, outcomes) == [1, 1, 2]
        keys = batch_keys(batch_id)
        until = await client.expiretime(keys["batch"])  # type: ignore[misc]
        assert until > time.time()
        parts = ("output", "errors", "ids", "attempts", "retry")
        assert [await client.expiretime(keys[p]) for p in parts] == [until] * len(parts)  # type: ignore[misc]

    run_async(redis_port, body)
