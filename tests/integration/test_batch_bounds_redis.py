"""What one tenant's batches may hold in Redis, against a real redis-server of this module's
own: at most MAX_RUNNING_BATCHES not finished at once (made at once too, at any door, without
reading other tenants' batches; 429 at the door past them), and a batch that fails validation
keeps no copy of its lines, nor one that ended otherwise."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.app import build
from gateway.batch.collector import Collector
from gateway.batch.runner import Pace, Runner
from gateway.batch.store import LINE_PARTS, MAX_RUNNING_BATCHES, BatchStore, Outcome, new_id
from gateway.settings import GatewaySettings
from llmq.redis_client import MAX_CONNECTIONS, bounded_client
from schemas.errors import ErrorCode, LlmqError
from schemas.names import BATCHES_ACTIVE, batch_keys, tenant_active_key
from schemas.request import DEFAULT_TENANT
from schemas.result import ErrorInfo, InferenceResult
from schemas.settings import ServiceSettings
from schemas.tenants import TenantPolicy
from tests.integration.batch_inputs import CATALOG, TENANT, Recorder, batch, chunks, line
from tests.integration.helpers import run_async, run_with

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]

REFUSED = f"you have {MAX_RUNNING_BATCHES} batches not finished"


async def _made(store: BatchStore, tenant: str, batch_id: str | None = None) -> str | LlmqError:
    """A batch of the tenant's (of a file it need not have), or why it was refused."""
    now = time.time()
    fields = {
        "id": batch_id or new_id("batch_"),
        "tenant": tenant,
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-none",
        "lines": "1",
        "completion_window": "24h",
        "status": "validating",
        "created_at": str(int(now)),
        "expires_at": str(now + 3600),
    }
    try:
        await store.create_batch(fields)
    except LlmqError as exc:
        return exc
    return fields["id"]


def test_a_tenant_past_its_running_batches_is_refused_until_one_ends(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        made = [await batch(store, [line(0)]) for _ in range(MAX_RUNNING_BATCHES)]
        with pytest.raises(LlmqError) as refused:
            await batch(store, [line(0)])
        assert refused.value.code == ErrorCode.RATE_LIMITED
        assert REFUSED in str(refused.value)
        assert await store.move(made[0], "in_progress", "validating")  # still running
        assert await store.move(made[0], "cancelling", "in_progress")  # not finished yet
        with pytest.raises(LlmqError):
            await batch(store, [line(0)])
        assert await store.move(made[0], "cancelled", "cancelling")
        await store.finish(made[0])  # as its runner does
        await batch(store, [line(0)])
        assert await client.ttl(tenant_active_key(TENANT)) > 3600  # no key without expiry

    run_async(redis_port, body)


def test_batches_made_at_once_are_counted_together(redis_port: int) -> None:
    """Each creation counts what another made meanwhile (counted and admitted in one step)."""

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
    assert REFUSED in error["message"]


def test_more_creations_at_once_than_redis_connections_are_each_made_or_refused(
    redis_port: int,
) -> None:
    """On the door's bounded pool, none waits for a connection that another creation holds
    (a 503 after the pool's timeout, every other Redis route of the door waiting)."""

    async def body(client: aioredis.Redis) -> list[str | LlmqError]:
        store = BatchStore(client, 3600)
        tenants = [f"t{n % 2}" for n in range(MAX_CONNECTIONS)]
        return await asyncio.gather(*(_made(store, t) for t in tenants))

    made = run_with(lambda: bounded_client(f"redis://127.0.0.1:{redis_port}/0", 5.0), body)
    refused = [m for m in made if isinstance(m, LlmqError)]
    assert len(made) - len(refused) == 2 * MAX_RUNNING_BATCHES
    assert {m.code for m in refused} == {ErrorCode.RATE_LIMITED}


def test_a_creation_reads_no_other_tenants_batches(redis_port: int) -> None:
    """32 made at once among 1,000 active batches of other tenants: none reads them, and all
    32 take fewer commands than there are such batches (counted by Redis: INFO commandstats)."""
    others = 1000

    async def body(client: aioredis.Redis) -> dict[str, int]:
        store = BatchStore(client, 3600)
        async with client.pipeline(transaction=False) as pipe:
            for n in range(others):
                fields = {"tenant": f"other{n % 100}", "status": "in_progress"}
                pipe.hset(batch_keys(f"batch_other{n}")["batch"], mapping=fields)
                pipe.sadd(BATCHES_ACTIVE, f"batch_other{n}")
            await pipe.execute()
        await _made(store, "warm")  # the scripts loaded
        await client.config_resetstat()
        made = await asyncio.gather(*(_made(store, f"t{n}") for n in range(32)))
        assert all(isinstance(m, str) for m in made)
        stats = await client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}

    calls = run_async(redis_port, body)
    assert "hmget" not in calls and "smembers" not in calls
    assert sum(calls.values()) < others, calls


def test_a_creation_that_failed_or_a_batch_gone_stops_counting(redis_port: int) -> None:
    """A creation that failed takes its place back; a batch no longer among the runners'
    (Redis lost it, or it ended unannounced) stops counting once its admission is old."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        made = [await _made(store, TENANT) for _ in range(MAX_RUNNING_BATCHES - 1)]
        taken = new_id("batch_")
        await client.set(batch_keys(taken)["batch"], "not a hash")  # its write fails
        with pytest.raises(aioredis.ResponseError):
            await _made(store, TENANT, taken)
        assert isinstance(await _made(store, TENANT), str)  # the 16th
        assert isinstance(await _made(store, TENANT), LlmqError)
        gone = made[0]
        assert isinstance(gone, str)
        await store.forget(gone)  # as a runner does once Redis lost its fields
        assert isinstance(await _made(store, TENANT), LlmqError)  # lately admitted: counts
        await client.zadd(tenant_active_key(TENANT), {gone: 0})  # admitted long ago
        assert isinstance(await _made(store, TENANT), str)
        assert await client.zscore(tenant_active_key(TENANT), gone) is None

    run_async(redis_port, body)


def test_a_creation_whose_reply_timed_out_after_its_write_landed_still_counts(
    redis_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EXEC applied, its reply lost to the socket timeout: the batch runs, so it keeps its
    place (given back, the SDK's retry of the 5xx made one more, uncounted)."""
    execute = Pipeline.execute

    async def applied_then_timed_out(self: Pipeline, raise_on_error: bool = True) -> object:
        await execute(self, raise_on_error)
        raise RedisTimeoutError("Timeout reading from socket")

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        monkeypatch.setattr(Pipeline, "execute", applied_then_timed_out)
        with pytest.raises(RedisTimeoutError):
            await _made(store, TENANT, "batch_late")
        monkeypatch.setattr(Pipeline, "execute", execute)
        assert await client.sismember(BATCHES_ACTIVE, "batch_late")  # type: ignore[misc]
        assert await client.zscore(tenant_active_key(TENANT), "batch_late") is not None

    run_async(redis_port, body)


def _responses(custom_ids: list[str]) -> list[str]:
    """A /v1/responses batch's lines, the nth asking "q n" under the nth custom_id."""
    calls = (
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": CATALOG.default, "input": f"q {n}"},
        }
        for n, custom_id in enumerate(custom_ids)
    )
    return [json.dumps(call) for call in calls]


def test_a_batch_that_fails_validation_keeps_no_copy_of_its_lines(redis_port: int) -> None:
    """A response's lines, the last a custom_id again: the batch fails, naming it, and its
    lines' custom_ids and echoes, written as each page was read, go with its run."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        batch_id = await batch(store, _responses([f"c{min(n, 2)}" for n in range(4)]))
        await store.update(batch_id, endpoint="/v1/responses")
        await Runner(store, Recorder(), CATALOG, "door-1").step(batch_id)
        fields = await store.batch(batch_id, TENANT)
        assert fields is not None and fields["status"] == "failed"
        assert [e["code"] for e in json.loads(fields["errors"])] == ["duplicate_custom_id"]
        keys = batch_keys(batch_id)
        assert await client.exists(*(keys[part] for part in LINE_PARTS)) == 0
        assert await client.ttl(keys["batch"]) > 0  # the failed batch itself is kept

    run_async(redis_port, body)


@pytest.mark.parametrize("end", ["completed", "cancelled", "expired"])
def test_an_ended_batch_keeps_no_copy_of_its_lines(redis_port: int, end: str) -> None:
    """A response batch's custom_ids, echoes, attempts and retries go as it ends, however it
    ends: kept, each batch held them for its retention (30 days). Its files stay whole, and a
    reply after its end is written nowhere (the collector finds no custom_id)."""

    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        batch_id = await batch(store, _responses(["c0", "c1"]))
        await store.update(batch_id, endpoint="/v1/responses")
        runner = Runner(store, recorder, CATALOG, "door-1", Pace(cancel_grace_s=0))
        await runner.tick()  # validated: its custom_ids and echoes are written
        await runner.tick()  # both lines sent
        later = Outcome(1, 0, "retry", {}, retry_at=time.time() + 600)
        assert await store.record(batch_id, TENANT, [later]) == [2]
        keys = batch_keys(batch_id)
        assert await client.exists(*(keys[part] for part in LINE_PARTS)) == len(LINE_PARTS)
        if end == "completed":
            answers = [Outcome(0, 0, "output", {"custom_id": "c0"})]
            answers.append(Outcome(1, 1, "output", {"custom_id": "c1"}))
            assert await store.record(batch_id, TENANT, answers) == [1, 1]
        elif end == "cancelled":
            assert await store.move(batch_id, "cancelling", "in_progress")
        else:
            await store.update(batch_id, expires_at=int(time.time()) - 1)
        await runner.tick()
        fields = await store.batch(batch_id, TENANT)
        assert fields is not None and fields["status"] == end
        assert await client.exists(*(keys[part] for part in LINE_PARTS)) == 0
        assert await client.ttl(keys["batch"]) > 0  # the ended batch itself is kept
        name = "output_file_id" if end == "completed" else "error_file_id"
        meta = await store.file(fields[name], TENANT)
        assert meta is not None
        assert [json.loads(o)["custom_id"] async for o in store.content(meta)] == ["c0", "c1"]
        late = InferenceResult(
            correlation_id=recorder.sent[0].correlation_id,
            tenant=TENANT,
            status="error",
            error=ErrorInfo(code=ErrorCode.ENGINE_ERROR, message="late", retriable=False),
        )
        await Collector(ServiceSettings(), store, "door-1").take([late.model_dump_json().encode()])
        assert await store.batch(batch_id, TENANT) == fields
        assert await client.exists(*(keys[part] for part in LINE_PARTS)) == 0

    run_async(redis_port, body)
