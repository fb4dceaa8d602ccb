"""The Batch API's runner against a real redis-server of this module's own (no Kafka, no
engine: the runner's requests are recorded, and replies are written as the collector
would): each line's outcome once, retries, pacing, cancel, expiry, leases."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka.errors import KafkaConnectionError

from gateway.batch import collector, objects
from gateway.batch.collector import outcome, parse_line_id
from gateway.batch.lines import output_line
from gateway.batch.runner import MAX_FAILED_STEPS, Pace, Runner
from gateway.batch.store import LINE_PARTS, BatchStore, Outcome
from schemas.errors import ErrorCode, LlmqError
from schemas.names import batch_keys, file_keys
from schemas.request import InferenceRequest
from schemas.result import ChatCompletion, Choice, ErrorInfo, InferenceResult, Usage
from schemas.settings import ServiceSettings
from tests.integration.batch_inputs import CATALOG, TENANT, Recorder, batch, line
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]


def _answer(request: InferenceRequest) -> InferenceResult:
    completion = ChatCompletion(
        id="c",
        created=1,
        model=CATALOG.default,
        choices=[Choice(message={"role": "assistant", "content": "A."}, finish_reason="stop")],
        usage=Usage.model_validate(
            {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
            | {"prompt_tokens_details": {"cached_tokens": 3}}
        ),
    )
    return InferenceResult(
        correlation_id=request.correlation_id, tenant=TENANT, status="ok", response=completion
    )


async def _reply(store: BatchStore, result: InferenceResult, expires_at: float) -> list[int]:
    """What the collector does with a reply."""
    assert result.correlation_id is not None
    parsed = parse_line_id(result.correlation_id)
    assert parsed is not None
    batch_id, number, attempt = parsed
    custom_id = (await store.custom_ids(batch_id, [number]))[0]
    if custom_id is None:  # the batch ended, its custom_ids with it: nothing is written
        return []
    made = outcome(number, attempt, custom_id, result, expires_at)
    return await store.record(batch_id, TENANT, [made])


async def _files(store: BatchStore, batch_id: str) -> dict[str, list[dict[str, Any]]]:
    fields = await store.batch(batch_id, TENANT)
    assert fields is not None
    found: dict[str, list[dict[str, Any]]] = {"output": [], "errors": []}
    for kind, name in (("output", "output_file_id"), ("errors", "error_file_id")):
        if name in fields:
            meta = await store.file(fields[name], TENANT)
            assert meta is not None
            found[kind] = [json.loads(line) async for line in store.content(meta)]
    return found


def test_a_paced_batch_runs_to_completion_each_line_once(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        runner = Runner(store, recorder, CATALOG, "door-1", Pace(in_flight=5))
        batch_id = await batch(store, [line(n) for n in range(12)])
        await runner.tick()  # validating -> in_progress
        assert (await store.batch(batch_id))["status"] == "in_progress"  # type: ignore[index]
        await runner.tick()
        assert len(recorder.sent) == 5  # never more than in_flight out at once
        await runner.tick()
        assert len(recorder.sent) == 5
        expires = time.time() + 3600
        for request in recorder.sent[:3]:
            assert await _reply(store, _answer(request), expires) == [1]
            assert await _reply(store, _answer(request), expires) == [0]  # a reply read twice
        await runner.tick()
        assert len(recorder.sent) == 8
        while len(recorder.sent) < 12 or (await store.batch(batch_id))["status"] != "completed":  # type: ignore[index]
            for request in recorder.sent:
                await _reply(store, _answer(request), expires)
            await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None
        assert (fields["completed"], fields.get("failed"), fields["total"]) == ("12", None, "12")
        assert (fields["input_tokens"], fields["output_tokens"]) == ("60", "12")
        assert fields["cached_tokens"] == "36"
        assert await store.active() == []
        keys = batch_keys(batch_id)
        assert not await client.exists(*(keys[part] for part in LINE_PARTS))  # its custom_ids
        await runner.tick()  # an ended batch is neither held nor leased
        assert not runner._held and not await client.exists(batch_keys(batch_id)["lease"])
        files = await _files(store, batch_id)
        assert sorted(line["custom_id"] for line in files["output"]) == sorted(
            f"c{n}" for n in range(12)
        )
        assert files["errors"] == []
        assert {r.correlation_id for r in recorder.sent} == {f"{batch_id}.{n}.0" for n in range(12)}
        output = await store.file(fields["output_file_id"], TENANT)
        assert output is not None
        await store.delete_file(output)  # its lines are the batch's: they go too
        assert await store.file(output["id"], TENANT) is None
        assert not await client.exists(batch_keys(batch_id)["output"])
        # A reply read again after the batch's end (a redelivery) writes nothing back.
        assert await _reply(store, _answer(recorder.sent[0]), expires) == []
        assert await store.record(batch_id, TENANT, [Outcome(0, 0, "output", {})]) == [0]
        assert not await client.exists(batch_keys(batch_id)["output"])
        assert (await store.batch(batch_id) or {}).get("completed") == "12"

    run_async(redis_port, body)


def test_lines_refused_as_they_are_sent_get_error_replies_and_the_rest_run(
    redis_port: int,
) -> None:
    """A line Kafka refuses for its size, and one that no longer reads (its model gone from
    the catalog since validation), fail as requests, as a worker's error reply does: a
    response with the HTTP status and OpenAI's error body, no batch-level error."""

    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder(too_large=frozenset({1}))
        runner = Runner(store, recorder, CATALOG, "door-1")
        batch_id = await batch(store, [line(n) for n in range(4)])
        await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None
        gone = json.loads(line(3)) | {"body": {"model": "gone", "messages": []}}
        await client.hset(file_keys(fields["input_file_id"])[1], "3", json.dumps(gone))  # type: ignore[misc]
        await runner.tick()
        assert [r.correlation_id for r in recorder.sent] == [f"{batch_id}.0.0", f"{batch_id}.2.0"]
        expires = time.time() + 3600
        for request in recorder.sent:
            await _reply(store, _answer(request), expires)
        await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "completed"
        assert (fields["completed"], fields["failed"]) == ("2", "2")
        files = await _files(store, batch_id)
        assert sorted(line["custom_id"] for line in files["output"]) == ["c0", "c2"]
        errors = {line["custom_id"]: line for line in files["errors"]}
        assert {c: e["error"] for c, e in errors.items()} == {"c1": None, "c3": None}
        large, unknown = errors["c1"]["response"], errors["c3"]["response"]
        assert large["status_code"] == 400 and large["request_id"] == f"req_{batch_id}.1.0"
        assert large["body"]["error"]["code"] == "context_length_exceeded"
        assert "(it takes at most 10000: max.message.bytes)" in large["body"]["error"]["message"]
        assert unknown["status_code"] == 404
        assert unknown["body"]["error"]["code"] == "model_not_found"

    run_async(redis_port, body)


def test_a_line_refused_for_a_while_is_sent_again_and_a_stale_reply_ignored(
    redis_port: int,
) -> None:
    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        runner = Runner(store, recorder, CATALOG, "door-1")
        batch_id = await batch(store, [line(0)])
        await runner.tick()
        await runner.tick()
        (first,) = recorder.sent
        limited = InferenceResult(
            correlation_id=first.correlation_id,
            tenant=TENANT,
            status="error",
            error=ErrorInfo(
                code=ErrorCode.RATE_LIMITED, message="slow", retriable=True, retry_after_s=0.01
            ),
        )
        expires = time.time() + 3600
        assert await _reply(store, limited, expires) == [2]
        assert await _reply(store, limited, expires) == [0]  # the same refusal read again
        await asyncio.sleep(0.05)
        await runner.tick()
        assert [r.correlation_id for r in recorder.sent] == [
            f"{batch_id}.0.0",
            f"{batch_id}.0.1",
        ]
        assert await _reply(store, _answer(first), expires) == [0]  # the first attempt's
        assert await _reply(store, _answer(recorder.sent[1]), expires) == [1]
        await runner.tick()
        assert (await store.batch(batch_id))["status"] == "completed"  # type: ignore[index]

    run_async(redis_port, body)


def _limited(request: InferenceRequest, wait_s: float = 0.01) -> InferenceResult:
    """A rate_limited reply: try again in `wait_s` (10 ms)."""
    error = ErrorInfo(
        code=ErrorCode.RATE_LIMITED, message="slow", retriable=True, retry_after_s=wait_s
    )
    return InferenceResult(
        correlation_id=request.correlation_id, tenant=TENANT, status="error", error=error
    )


class Refusing(Recorder):
    """Admission refuses a line sent again at once: its reply is written before publish()
    returns (it waits for the broker's acks)."""

    def __init__(self, store: BatchStore) -> None:
        super().__init__()
        self._store = store

    async def publish(self, requests: Sequence[InferenceRequest]) -> dict[str, LlmqError]:
        refused = await super().publish(requests)
        for request in requests:
            if not request.correlation_id.endswith(".0"):
                assert await _reply(self._store, _limited(request), time.time() + 3600) == [2]
        return refused


def test_a_line_refused_again_while_it_is_being_sent_again_stays_to_be_retried(
    redis_port: int,
) -> None:
    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        recorder = Refusing(store)
        runner = Runner(store, recorder, CATALOG, "door-1")
        batch_id = await batch(store, [line(0)])
        await runner.tick()
        await runner.tick()
        assert await _reply(store, _limited(recorder.sent[0]), time.time() + 3600) == [2]
        await asyncio.sleep(0.05)
        await runner.tick()  # sends attempt 1, refused before publish() returns
        assert await store.attempts(batch_id, [0]) == [2]
        assert await store.waiting_retries(batch_id) == 1  # not lost: attempt 2 is due
        await asyncio.sleep(0.05)
        await runner.tick()
        assert [r.correlation_id for r in recorder.sent] == [
            f"{batch_id}.0.{attempt}" for attempt in range(3)
        ]

    run_async(redis_port, body)


def test_a_batch_whose_lines_are_refused_waits_then_sends_them_one_at_a_time(
    redis_port: int,
) -> None:
    """Each line refused halves the batch's window (4 lines: to one); the batch sends
    nothing, no new line either, until the next waiting line is due (next_retry), and then
    as many as its window."""

    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        runner = Runner(store, recorder, CATALOG, "door-1", Pace(in_flight=4))
        batch_id = await batch(store, [line(n) for n in range(6)])
        await runner.tick()
        await runner.tick()
        assert len(recorder.sent) == 4
        expires = time.time() + 3600
        for request in recorder.sent:
            # 5 s: nothing comes due before the next look, however busy the machine.
            assert await _reply(store, _limited(request, 5.0), expires) == [2]
        first = await store.next_retry(batch_id, time.time())
        assert first is not None
        second = await store.next_retry(batch_id, first)  # after `first`, not at it
        assert second is not None and second > first
        assert await store.next_retry(batch_id, time.time() + 5.0) is None
        await runner.tick()
        assert len(recorder.sent) == 4  # held: nothing is due, and no new line goes
        await asyncio.sleep(max(0.0, second - time.time()) + 0.05)
        await runner.tick()
        assert [r.correlation_id for r in recorder.sent[4:]] == [f"{batch_id}.0.1"]

    run_async(redis_port, body)


def test_a_cancel_stops_the_lines_in_flight_and_the_rest(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        runner = Runner(store, recorder, CATALOG, "door-1", Pace(in_flight=4, cancel_grace_s=0))
        batch_id = await batch(store, [line(n) for n in range(10)])
        await runner.tick()
        await runner.tick()
        expires = time.time() + 3600
        await _reply(store, _answer(recorder.sent[0]), expires)
        assert await store.move(batch_id, "cancelling", "validating", "in_progress")
        await runner.tick()
        assert sorted(recorder.cancelled) == sorted(r.correlation_id for r in recorder.sent[1:])
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "cancelled"
        assert (fields["completed"], fields["failed"]) == ("1", "9")
        files = await _files(store, batch_id)
        assert [line["custom_id"] for line in files["output"]] == ["c0"]
        assert {line["error"]["code"] for line in files["errors"]} == {"batch_cancelled"}
        await _reply(store, _answer(recorder.sent[1]), expires)  # too late: not counted
        assert (await store.batch(batch_id))["completed"] == "1"  # type: ignore[index]

    run_async(redis_port, body)


def test_a_reply_that_cannot_be_written_ends_its_line_not_the_collector(
    redis_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in writing one reply would fail again at every re-read of the topic."""

    def broken(
        custom_id: str, result: InferenceResult, endpoint: str, asked: dict[str, Any] | None
    ) -> dict[str, Any]:
        if custom_id == "c1":
            raise RuntimeError("a bug")
        return output_line(custom_id, result, endpoint, asked)

    monkeypatch.setattr(collector, "output_line", broken)

    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        runner = Runner(store, recorder, CATALOG, "door-1", Pace(in_flight=3))
        batch_id = await batch(store, [line(n) for n in range(3)])
        await runner.tick()
        await runner.tick()
        replies = [_answer(r).model_dump_json().encode() for r in recorder.sent]
        await collector.Collector(ServiceSettings(), store, "door-1").take([*replies])
        await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "completed"
        files = await _files(store, batch_id)
        assert sorted(line["custom_id"] for line in files["output"]) == ["c0", "c2"]
        [error] = files["errors"]
        assert error["custom_id"] == "c1" and error["error"] is None
        failure = error["response"]["body"]["error"]
        assert error["response"]["status_code"] == 500 and failure["code"] == "internal_error"
        assert failure["message"].endswith("could not be written: RuntimeError: a bug")

    run_async(redis_port, body)


def test_an_expired_batch_ends_every_unanswered_line(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        runner = Runner(store, recorder, CATALOG, "door-1", Pace(in_flight=3))
        batch_id = await batch(store, [line(n) for n in range(6)], window_s=1.0)
        await runner.tick()
        await runner.tick()
        await asyncio.sleep(1.1)
        await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "expired" and "expired_at" in fields
        assert sorted(recorder.cancelled) == sorted(r.correlation_id for r in recorder.sent)
        files = await _files(store, batch_id)
        assert sorted(line["custom_id"] for line in files["errors"]) == [f"c{n}" for n in range(6)]
        assert {line["error"]["code"] for line in files["errors"]} == {"batch_expired"}

    run_async(redis_port, body)


def test_a_batch_answered_in_its_window_completes_though_looked_at_after_it(
    redis_port: int,
) -> None:
    """The runner looks at a batch every tick: a batch whose last reply came just before its
    window ended completes, not expires, when the next tick falls after the window."""

    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        runner = Runner(store, recorder, CATALOG, "door-1")
        batch_id = await batch(store, [line(n) for n in range(3)], window_s=2.0)
        await runner.tick()
        await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "in_progress"
        expires = float(fields["expires_at"])
        for request in recorder.sent:
            assert await _reply(store, _answer(request), expires) == [1]
        await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
        await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "completed", fields
        assert "expired_at" not in fields and recorder.cancelled == []
        files = await _files(store, batch_id)
        assert sorted(line["custom_id"] for line in files["output"]) == ["c0", "c1", "c2"]
        assert files["errors"] == []

    run_async(redis_port, body)


def test_one_front_door_drives_a_batch_until_its_lease_lapses(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        first, second = Recorder(), Recorder()
        # A lease of 2 s: door-1 renews it at every tick, milliseconds apart.
        one = Runner(store, first, CATALOG, "door-1", Pace(lease_s=2.0))
        two = Runner(store, second, CATALOG, "door-2", Pace(lease_s=2.0))
        await batch(store, [line(n) for n in range(3)])
        for _ in range(3):
            await one.tick()
            await two.tick()
        assert (len(first.sent), len(second.sent)) == (3, 0)
        await asyncio.sleep(2.1)  # door-1 is gone: its lease lapses, and door-2 goes on
        assert await store.lease((await store.active())[0], "door-2", 2.0)

    run_async(redis_port, body)


class Slow(Recorder):
    """Kafka slow to take the first page: its acknowledgement comes after `delay_s`."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def publish(self, requests: Sequence[InferenceRequest]) -> dict[str, LlmqError]:
        delay_s, self.delay_s = self.delay_s, 0.0
        await asyncio.sleep(delay_s)
        return await super().publish(requests)


def test_a_step_longer_than_its_lease_keeps_the_batch_from_a_second_door(
    redis_port: int,
) -> None:
    """door-1's first page takes three leases' lengths to be acknowledged; door-2, looking
    meanwhile, finds the lease still door-1's (renewed as the step runs) and sends nothing.
    The lease used to lapse under the step: door-2 sent the same 10 lines again, and each
    was generated (and paid for) twice."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        first, second = Slow(3.0), Recorder()
        pace = Pace(in_flight=10, lease_s=1.0, tick_s=0.1)
        one = Runner(store, first, CATALOG, "door-1", pace)
        two = Runner(store, second, CATALOG, "door-2", pace)
        batch_id = await batch(store, [line(n) for n in range(20)])
        await one.tick()  # validating -> in_progress
        sending = asyncio.create_task(one.tick())
        await asyncio.sleep(1.5)
        await two.tick()
        await sending
        assert len(first.sent) == 10 and second.sent == []
        assert await client.get(batch_keys(batch_id)["lease"]) == b"door-1"

    run_async(redis_port, body)


class Unreachable(Recorder):
    """A front door that reaches Redis but not Kafka: every publish fails."""

    async def publish(self, requests: Sequence[InferenceRequest]) -> dict[str, LlmqError]:
        raise KafkaConnectionError("no broker reachable")


def test_a_front_door_that_cannot_publish_gives_its_batch_up(redis_port: int) -> None:
    """Its steps fail MAX_FAILED_STEPS times in a row: it releases the lease and sits out a
    lease's length, a healthy door sends the lines, and the first takes the batch again
    after that, once nobody else holds it."""

    async def body(client: aioredis.Redis) -> None:
        store, healthy = BatchStore(client, 3600), Recorder()
        one = Runner(store, Unreachable(), CATALOG, "door-1", Pace(lease_s=2.0))
        two = Runner(store, healthy, CATALOG, "door-2")
        batch_id = await batch(store, [line(n) for n in range(3)])
        lease = batch_keys(batch_id)["lease"]
        await one.tick()  # door-1 validates (nothing to publish yet)
        await two.tick()
        for _ in range(MAX_FAILED_STEPS - 1):
            await one.tick()
            await two.tick()
            assert await client.get(lease) == b"door-1" and healthy.sent == []
        await one.tick()  # the last failed step in a row: door-1 gives the lease up
        assert not await client.exists(lease)
        await two.tick()
        assert [r.correlation_id for r in healthy.sent] == [f"{batch_id}.{n}.0" for n in range(3)]
        await one.tick()
        assert await client.get(lease) == b"door-2"
        await store.release(batch_id, "door-2")  # door-2 stops
        await one.tick()  # door-1 still sits out (another door might have missed a look)
        assert not await client.exists(lease)
        await asyncio.sleep(2.1)  # past a lease's length
        await one.tick()  # nothing left to publish: door-1 drives it again
        assert await client.get(lease) == b"door-1"

    run_async(redis_port, body)


class CancelledWhileRead(BatchStore):
    """The batch is cancelled once validation has read (and named) its first page of lines."""

    async def name_lines(
        self,
        batch_id: str,
        custom_ids: Mapping[int, str],
        asked: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        await super().name_lines(batch_id, custom_ids, asked)
        await self.move(batch_id, "cancelling", "validating")


def test_a_batch_cancelled_while_validating_counts_the_lines_read(redis_port: int) -> None:
    """A bad line fails validation, but the batch was cancelled meanwhile: the lines read get
    batch_cancelled, and its total counts them (failed never exceeds total)."""

    async def body(client: aioredis.Redis) -> None:
        store = CancelledWhileRead(client, 3600)
        runner = Runner(store, Recorder(), CATALOG, "door-1", Pace(cancel_grace_s=0))
        batch_id = await batch(store, [line(0), line(1), "{"])
        await runner.tick()  # validates, cancelled meanwhile
        await runner.tick()  # cancelling -> cancelled
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "cancelled"
        counts = objects.batch_object(fields)["request_counts"]
        assert counts == {"total": 2, "completed": 0, "failed": 2}

    run_async(redis_port, body)
