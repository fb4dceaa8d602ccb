"""A batch of an endpoint this front door does not know (a newer door made it, during a
rollout), against a real redis-server of this module's own: the runner leaves its validation
and its lines' sends to a door that knows it, but expires, cancels and completes it itself
(every door that knows it may be rolled back), and the collector writes none of its replies
(in another endpoint's shape) but sends their lines again, for such a door to answer."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.batch.collector import Collector
from gateway.batch.lines import ENDPOINT
from gateway.batch.runner import Pace, Runner
from gateway.batch.store import BatchStore, Outcome
from llmq.throttle import APART
from schemas.names import batch_keys
from schemas.request import InferenceRequest
from schemas.result import ChatCompletion, Choice, InferenceResult, Usage
from schemas.settings import ServiceSettings
from tests.integration.batch_inputs import CATALOG, TENANT, Recorder, batch, line
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]

NEWER = "/v1/embeddings"
"""An endpoint this llmq does not know."""


def _answer(request: InferenceRequest) -> bytes:
    """A chat answer to a line's request, as its reply's record."""
    choice = Choice(message={"role": "assistant", "content": "A."}, finish_reason="stop")
    usage = Usage(prompt_tokens=5, completion_tokens=1, total_tokens=6)
    answer = ChatCompletion(id="c", created=1, model="m", choices=[choice], usage=usage)
    result = InferenceResult(
        correlation_id=request.correlation_id, tenant=TENANT, status="ok", response=answer
    )
    return result.model_dump_json().encode()


async def _output(
    store: BatchStore, fields: dict[str, str], name: str = "output_file_id"
) -> list[dict[str, Any]]:
    meta = await store.file(fields[name], TENANT)
    assert meta is not None
    return [json.loads(line) async for line in store.content(meta)]


async def _sent_then_newer(store: BatchStore, recorder: Recorder) -> str:
    """A batch of two lines whose lines a door that knows its endpoint sent, now of NEWER
    (as a newer door's batch is to an older door)."""
    runner = Runner(store, recorder, CATALOG, "door-new", Pace(in_flight=2))
    batch_id = await batch(store, [line(0), line(1)])
    await runner.tick()  # validating -> in_progress
    await runner.tick()  # both lines sent
    assert len(recorder.sent) == 2
    await store.update(batch_id, endpoint=NEWER)
    await store.release(batch_id, "door-new")  # every door that knows NEWER is rolled back
    return batch_id


async def _codes(store: BatchStore, batch_id: str) -> dict[str, str]:
    """Each error line's custom_id and error code, once the batch ended."""
    fields = await store.batch(batch_id)
    assert fields is not None
    return {
        e["custom_id"]: e["error"]["code"] for e in await _output(store, fields, "error_file_id")
    }


def test_a_runner_leaves_a_batch_of_an_endpoint_it_does_not_know_untouched(
    redis_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        runner = Runner(store, recorder, CATALOG, "door-old")
        batch_id = await batch(store, [line(0), line(1)])
        await store.update(batch_id, endpoint=NEWER)
        with caplog.at_level(logging.WARNING):
            await runner.tick()  # leased, given back at once
            await runner.tick()  # left alone
            await runner.step(batch_id)
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "validating"
        assert "errors" not in fields and "total" not in fields
        keys = batch_keys(batch_id)
        assert not await client.exists(keys["lease"], keys["ids"])
        assert await store.active() == [batch_id] and not runner._held
        assert recorder.sent == []
        assert caplog.text.count(f"batch {batch_id} calls {NEWER}") == 1
        assert [getattr(r, APART, None) for r in caplog.records] == [(batch_id,)]
        # A door that knows the endpoint takes it at once, as it was made.
        await store.update(batch_id, endpoint=ENDPOINT)
        await Runner(store, recorder, CATALOG, "door-new").tick()
        assert (await store.batch(batch_id) or {})["status"] == "in_progress"

    run_async(redis_port, body)


def test_replies_of_a_batch_of_an_endpoint_it_does_not_know_are_sent_again(
    redis_port: int,
) -> None:
    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        runner = Runner(store, recorder, CATALOG, "door-new", Pace(in_flight=2))
        collector = Collector(ServiceSettings(), store, "door-old")
        batch_id = await batch(store, [line(0), line(1)])
        await runner.tick()
        await runner.tick()
        assert [r.correlation_id for r in recorder.sent] == [f"{batch_id}.0.0", f"{batch_id}.1.0"]
        await store.update(batch_id, endpoint=NEWER)  # as a newer door's batch
        await collector.take([_answer(r) for r in recorder.sent])
        fields = await store.batch(batch_id)
        assert fields is not None and "completed" not in fields and "failed" not in fields
        keys = batch_keys(batch_id)
        assert not await client.exists(keys["output"], keys["errors"])
        assert await store.attempts(batch_id, [0, 1]) == [1, 1]
        assert await store.waiting_retries(batch_id) == 2
        # The door that knows the endpoint sends them again, and writes their answers.
        await store.update(batch_id, endpoint=ENDPOINT)
        for _ in range(10):
            await runner.tick()
            await collector.take([_answer(r) for r in recorder.sent])
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "completed"
        assert fields["completed"] == "2" and "failed" not in fields
        output = await _output(store, fields)
        assert sorted(o["id"] for o in output) == [
            f"batch_req_{batch_id}.0.1",
            f"batch_req_{batch_id}.1.1",
        ]
        assert {o["response"]["body"]["object"] for o in output} == {"chat.completion"}

    run_async(redis_port, body)


def test_a_batch_of_an_endpoint_it_does_not_know_expires_at_its_window(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        batch_id = await _sent_then_newer(store, recorder)
        await store.update(batch_id, expires_at=int(time.time()) - 1)
        await Runner(store, recorder, CATALOG, "door-old").tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "expired"
        assert (fields["failed"], fields["total"]) == ("2", "2")
        assert await _codes(store, batch_id) == {"c0": "batch_expired", "c1": "batch_expired"}
        assert sorted(recorder.cancelled) == [f"{batch_id}.0.0", f"{batch_id}.1.0"]
        assert await store.active() == []

    run_async(redis_port, body)


def test_a_cancelled_batch_of_an_endpoint_it_does_not_know_is_cancelled(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        batch_id = await _sent_then_newer(store, recorder)
        assert await store.move(batch_id, "cancelling", "in_progress")
        old = Runner(store, recorder, CATALOG, "door-old", Pace(cancel_grace_s=0))
        await old.tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "cancelled"
        assert await _codes(store, batch_id) == {"c0": "batch_cancelled", "c1": "batch_cancelled"}
        assert sorted(recorder.cancelled) == [f"{batch_id}.0.0", f"{batch_id}.1.0"]
        assert await store.active() == []

    run_async(redis_port, body)


def test_an_answered_batch_of_an_endpoint_it_does_not_know_completes(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        batch_id = await _sent_then_newer(store, recorder)
        answers = [Outcome(n, 0, "output", {"custom_id": f"c{n}"}) for n in (0, 1)]
        assert await store.record(batch_id, TENANT, answers) == [1, 1]
        await Runner(store, recorder, CATALOG, "door-old").tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "completed"
        assert sorted(o["custom_id"] for o in await _output(store, fields)) == ["c0", "c1"]
        assert len(recorder.sent) == 2 and await store.active() == []

    run_async(redis_port, body)
