"""What one tenant's batches may hold in Redis, against a real redis-server of this module's
own: at most MAX_RUNNING_BATCHES validating or in progress at once (made at once too; 429 at
the door past them), and a batch that fails validation keeps no copy of its lines."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.app import build
from gateway.batch.runner import Runner
from gateway.batch.store import LINE_PARTS, MAX_RUNNING_BATCHES, BatchStore
from gateway.settings import GatewaySettings
from schemas.errors import ErrorCode, LlmqError
from schemas.names import batch_keys
from schemas.request import DEFAULT_TENANT
from schemas.tenants import TenantPolicy
from tests.integration.batch_inputs import CATALOG, TENANT, Recorder, batch, chunks, line
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]


def test_a_tenant_past_its_running_batches_is_refused_until_one_ends(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        made = [await batch(store, [line(0)]) for _ in range(MAX_RUNNING_BATCHES)]
        with pytest.raises(LlmqError) as refused:
            await batch(store, [line(0)])
        assert refused.value.code == ErrorCode.RATE_LIMITED
        assert f"you have {MAX_RUNNING_BATCHES} batches validating or in progress" in str(
            refused.value
        )
        assert await store.move(made[0], "in_progress", "validating")  # still running
        with pytest.raises(LlmqError):
            await batch(store, [line(0)])
        assert await store.move(made[0], "cancelling", "in_progress")
        await batch(store, [line(0)])

    run_async(redis_port, body)


def test_batches_made_at_once_are_counted_together(redis_port: int) -> None:
    """Each creation counts what another made meanwhile (the runners' set is watched)."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        tries = MAX_RUNNING_BATCHES + 8
        made = await asyncio.gather(
            *(batch(store, [line(0)]) for _ in range(tries)), return_exceptions=True
        )
        refused = [m for m in made if isinstance(m, LlmqError)]
        assert len(refused) == tries - MAX_RUNNING_BATCHES
        assert all(m.code == ErrorCode.RATE_LIMITED for m in refused)

    run_async(redis_port, body)


def test_the_door_refuses_a_batch_past_the_bound_with_a_429_naming_it(redis_port: int) -> None:
    app = build(GatewaySettings(), CATALOG, TenantPolicy.load(None))  # no keys: tenant default

    async def body(client: aioredis.Redis) -> list[httpx.Response]:
        store = app.state.door.batches = BatchStore(client, 3600)
        upload = await store.create_file(DEFAULT_TENANT, "in.jsonl", "batch", chunks(line(0)))
        asked = {
            "input_file_id": upload["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return [
                await http.post("/v1/batches", json=asked) for _ in range(MAX_RUNNING_BATCHES + 1)
            ]

    answers = run_async(redis_port, body)
    assert [a.status_code for a in answers] == [200] * MAX_RUNNING_BATCHES + [429]
    error = answers[-1].json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
    assert f"you have {MAX_RUNNING_BATCHES} batches validating or in progress" in error["message"]


def test_a_batch_that_fails_validation_keeps_no_copy_of_its_lines(redis_port: int) -> None:
    """A response's lines, the last a custom_id again: the batch fails, naming it, and its
    lines' custom_ids and echoes, written as each page was read, go with its run."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        calls = [
            {
                "custom_id": f"c{min(n, 2)}",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": CATALOG.default, "input": f"q {n}"},
            }
            for n in range(4)
        ]
        batch_id = await batch(store, [json.dumps(c) for c in calls])
        await store.update(batch_id, endpoint="/v1/responses")
        await Runner(store, Recorder(), CATALOG, "door-1").step(batch_id)
        fields = await store.batch(batch_id, TENANT)
        assert fields is not None and fields["status"] == "failed"
        assert [e["code"] for e in json.loads(fields["errors"])] == ["duplicate_custom_id"]
        keys = batch_keys(batch_id)
        assert await client.exists(*(keys[part] for part in LINE_PARTS)) == 0
        assert await client.ttl(keys["batch"]) > 0  # the failed batch itself is kept

    run_async(redis_port, body)
