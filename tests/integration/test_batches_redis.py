"""The Batch API's store and runner against a real redis-server of this module's own (no
Kafka, no engine: the runner's requests are recorded, and replies are written as the
collector would): each line's outcome once, retries, pacing, cancel, expiry, leases, limits."""

from __future__ import annotations

import asyncio
import io
import json
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from aiokafka.errors import KafkaConnectionError
from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from gateway.batch import collector, objects, routes
from gateway.batch.collector import outcome, parse_line_id
from gateway.batch.lines import output_line
from gateway.batch.runner import MAX_FAILED_STEPS, Pace, Runner
from gateway.batch.store import (
    GONE_S,
    MAX_BLANK_LINES,
    MAX_FILE_LINES,
    MAX_LINE_BYTES,
    BatchStore,
)
from gateway.door import ApiError
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.names import batch_keys, file_keys, tenant_index_key
from schemas.request import InferenceRequest, RecordRefusedError
from schemas.result import ChatCompletion, Choice, ErrorInfo, InferenceResult, Usage
from schemas.settings import ServiceSettings
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]

CATALOG = Catalog.builtin()
TENANT = "acme"


class Recorder:
    """Where the runner's lines and cancels go."""

    def __init__(self, too_large: frozenset[int] = frozenset()) -> None:
        self.sent: list[InferenceRequest] = []
        self.cancelled: list[str] = []
        self._too_large = too_large
        """Numbers of the lines Kafka refuses for their size."""

    async def publish(self, requests: Sequence[InferenceRequest]) -> dict[str, LlmqError]:
        refused: dict[str, LlmqError] = {
            r.correlation_id: RecordRefusedError("llmq.requests", 20_000, 10_000)
            for r in requests
            if int(r.correlation_id.split(".")[1]) in self._too_large
        }
        self.sent += [r for r in requests if r.correlation_id not in refused]
        return refused

    async def cancel(self, correlation_id: str, *, tenant: str | None = None) -> None:
        assert tenant == TENANT
        self.cancelled.append(correlation_id)


def _line(n: int) -> str:
    body = {"model": CATALOG.default, "messages": [{"role": "user", "content": f"q {n}"}]}
    return json.dumps(
        {"custom_id": f"c{n}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


async def _chunks(text: str, size: int = 7) -> AsyncIterator[bytes]:
    data = text.encode()
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _batch(store: BatchStore, lines: list[str], window_s: float = 3600) -> str:
    """A batch of these lines (validating)."""
    meta = await store.create_file(TENANT, "in.jsonl", "batch", _chunks("\n".join(lines)))
    batch_id = f"batch_{time.time_ns():x}"
    now = time.time()
    await store.create_batch(
        {
            "id": batch_id,
            "tenant": TENANT,
            "endpoint": "/v1/chat/completions",
            "input_file_id": meta["id"],
            "lines": meta["lines"],
            "completion_window": "24h",
            "status": "validating",
            "created_at": str(int(now)),
            "expires_at": str(now + window_s),
        }
    )
    return batch_id


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
    assert custom_id is not None
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
        batch_id = await _batch(store, [_line(n) for n in range(12)])
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
        assert await _reply(store, _answer(recorder.sent[0]), expires) == [0]
        assert not await client.exists(batch_keys(batch_id)["output"])
        assert (await store.batch(batch_id) or {}).get("completed") == "12"

    run_async(redis_port, body)


def test_a_line_kafka_refuses_for_its_size_gets_its_error_line_and_the_rest_run(
    redis_port: int,
) -> None:
    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder(too_large=frozenset({1}))
        runner = Runner(store, recorder, CATALOG, "door-1")
        batch_id = await _batch(store, [_line(n) for n in range(3)])
        await runner.tick()
        await runner.tick()
        assert [r.correlation_id for r in recorder.sent] == [f"{batch_id}.0.0", f"{batch_id}.2.0"]
        expires = time.time() + 3600
        for request in recorder.sent:
            await _reply(store, _answer(request), expires)
        await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "completed"
        assert (fields["completed"], fields["failed"]) == ("2", "1")
        files = await _files(store, batch_id)
        assert sorted(line["custom_id"] for line in files["output"]) == ["c0", "c2"]
        [error] = files["errors"]
        assert error["custom_id"] == "c1"
        assert error["error"]["code"] == "prompt_too_large"
        assert "(it takes at most 10000: max.message.bytes)" in error["error"]["message"]

    run_async(redis_port, body)


def test_a_line_refused_for_a_while_is_sent_again_and_a_stale_reply_ignored(
    redis_port: int,
) -> None:
    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        runner = Runner(store, recorder, CATALOG, "door-1")
        batch_id = await _batch(store, [_line(0)])
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
        batch_id = await _batch(store, [_line(0)])
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
        batch_id = await _batch(store, [_line(n) for n in range(6)])
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
        batch_id = await _batch(store, [_line(n) for n in range(10)])
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
        batch_id = await _batch(store, [_line(n) for n in range(3)])
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
        assert error["custom_id"] == "c1" and error["error"]["code"] == "internal_error"
        assert error["error"]["message"].endswith("could not be written: RuntimeError: a bug")

    run_async(redis_port, body)


def test_an_expired_batch_ends_every_unanswered_line(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store, recorder = BatchStore(client, 3600), Recorder()
        runner = Runner(store, recorder, CATALOG, "door-1", Pace(in_flight=3))
        batch_id = await _batch(store, [_line(n) for n in range(6)], window_s=1.0)
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
        batch_id = await _batch(store, [_line(n) for n in range(3)], window_s=2.0)
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
        await _batch(store, [_line(n) for n in range(3)])
        for _ in range(3):
            await one.tick()
            await two.tick()
        assert (len(first.sent), len(second.sent)) == (3, 0)
        await asyncio.sleep(2.1)  # door-1 is gone: its lease lapses, and door-2 goes on
        assert await store.lease((await store.active())[0], "door-2", 2.0)

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
        batch_id = await _batch(store, [_line(n) for n in range(3)])
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
        batch_id = await _batch(store, [_line(0), _line(1), "{"])
        await runner.tick()  # validates, cancelled meanwhile
        await runner.tick()  # cancelling -> cancelled
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "cancelled"
        counts = objects.batch_object(fields)["request_counts"]
        assert counts == {"total": 2, "completed": 0, "failed": 2}

    run_async(redis_port, body)


def test_a_bad_file_fails_its_batch_naming_the_lines(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        runner = Runner(store, Recorder(), CATALOG, "door-1")
        other = json.loads(_line(2))
        other["body"]["model"] = "auto"
        lines = [_line(0), "{", _line(0), json.dumps(other)]
        batch_id = await _batch(store, lines)
        await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "failed"
        errors = json.loads(fields["errors"])
        assert [(e["code"], e["line"]) for e in errors][:3] == [
            ("mixed_models", None),
            ("invalid_json", 2),
            ("duplicate_custom_id", 3),
        ]

    run_async(redis_port, body)


def test_a_deleted_file_is_gone_whole_and_a_batch_made_on_it_fails(redis_port: int) -> None:
    """The front door refuses to delete a file an active batch reads; a batch made while its
    file was being deleted finds it gone."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        runner = Runner(store, Recorder(), CATALOG, "door-1")
        batch_id = await _batch(store, [_line(0), _line(1)])
        fields = await store.batch(batch_id)
        assert fields is not None
        file_id = fields["input_file_id"]
        assert await store.readers(file_id) == [(batch_id, "validating")]
        meta = await store.file(file_id, TENANT)
        assert meta is not None
        await store.delete_file(meta)
        assert await client.keys("llmq:file:*") == []
        listing = await routes._listed(
            _request_for(store), TENANT, routes.Page("files", None, 9, 9)
        )
        assert listing["data"] == [] and await store.listed(TENANT, "files", None, 10) == []
        await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "failed"
        errors = json.loads(fields["errors"])
        assert [(e["code"], e["line"]) for e in errors] == [("missing_input_file", None)]
        assert file_id in errors[0]["message"]
        assert await store.readers(file_id) == []  # an ended batch leaves the active set

    run_async(redis_port, body)


def test_uploads_past_openais_limits_are_refused_and_not_kept(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        many = "\n".join("{}" for _ in range(MAX_FILE_LINES + 1))
        with pytest.raises(LlmqError, match="line 50001 holds a request: past 50000 lines"):
            await store.create_file(TENANT, "big.jsonl", "batch", _chunks(many, 65536))
        assert await client.keys("llmq:file:*") == []
        blank = "\n" * MAX_FILE_LINES + "{}"  # blank lines count: their numbers are walked
        with pytest.raises(LlmqError, match="past 50000 lines, blank ones counted"):
            await store.create_file(TENANT, "blank.jsonl", "batch", _chunks(blank, 65536))
        assert await client.keys("llmq:file:*") == []
        kept = await store.create_file(TENANT, "b.jsonl", "batch", _chunks(blank[1:], 65536))
        assert (kept["lines"], kept["requests"]) == (str(MAX_FILE_LINES), "1")
        # Blank lines at the end of a full file pass (an editor's), a flood of them does not.
        full = many[: -len("\n{}")] + "\n\n\n"
        kept = await store.create_file(TENANT, "full.jsonl", "batch", _chunks(full, 65536))
        assert kept["requests"] == str(MAX_FILE_LINES)
        flood = "{}" + "\n" * (MAX_BLANK_LINES + 1)
        with pytest.raises(LlmqError, match=f"more than {MAX_BLANK_LINES} lines, blank ones too"):
            await store.create_file(TENANT, "flood.jsonl", "batch", _chunks(flood, 65536))

    run_async(redis_port, body)


def test_a_line_past_the_line_limit_is_refused_naming_it_before_it_is_whole(
    redis_port: int,
) -> None:
    """A line longer than any request a record holds is refused as soon as it passes the
    limit: the rest of it is never read, nothing is kept; a line at the limit is kept."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        read: list[int] = []

        async def endless() -> AsyncIterator[bytes]:
            yield b"{}\n"
            while len(read) < 1000:  # a 1000 MiB line, were it read whole
                read.append(1)
                yield b"x" * (1 << 20)

        with pytest.raises(LlmqError, match=f"line 2 is longer than {MAX_LINE_BYTES} bytes"):
            await store.create_file(TENANT, "long.jsonl", "batch", endless())
        assert len(read) == MAX_LINE_BYTES // (1 << 20) + 1
        assert await client.keys("llmq:file:*") == []
        at_limit = "{}\n" + "x" * MAX_LINE_BYTES
        kept = await store.create_file(TENANT, "at.jsonl", "batch", _chunks(at_limit, 1 << 20))
        assert (await store.lines(kept["id"], [1]))[0] == at_limit[3:].encode()
        crlf = at_limit + "\r\n{}"  # a CR before its newline is no part of the line
        kept = await store.create_file(TENANT, "crlf.jsonl", "batch", _chunks(crlf, 1 << 20))
        assert (await store.lines(kept["id"], [1]))[0] == at_limit[3:].encode()
        past = at_limit + "x\n{}"  # the line ends within the chunk that takes it past
        with pytest.raises(LlmqError, match="line 2 is longer"):
            await store.create_file(TENANT, "past.jsonl", "batch", _chunks(past, len(past)))

    run_async(redis_port, body)


def test_an_upload_with_a_line_past_the_limit_is_a_400_naming_it(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        data = b"{}\n{}\n" + b"x" * (MAX_LINE_BYTES + 1)
        form = FormData([("file", UploadFile(io.BytesIO(data))), ("purpose", "batch")])
        with pytest.raises(ApiError) as refused:
            await routes._keep(BatchStore(client, 3600), TENANT, form)
        assert refused.value.status == 400
        message = refused.value.body["error"]["message"]
        assert message.startswith(f"line 3 is longer than {MAX_LINE_BYTES} bytes"), message
        assert await client.keys("llmq:file:*") == []

    run_async(redis_port, body)


def test_a_batch_keeps_its_input_file_past_its_window(redis_port: int) -> None:
    """A file kept 60 s is kept, once a batch reads it, until the batch's expires_at and 60 s
    more, as the batch is: neither expires while the batch runs."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 60)
        batch_id = await _batch(store, [_line(0)], window_s=3600)
        fields = await store.batch(batch_id, TENANT)
        assert fields is not None
        until = int(float(fields["expires_at"])) + 60
        meta = await store.file(fields["input_file_id"], TENANT)
        assert meta is not None and int(meta["expires_at"]) == until
        for key in [*file_keys(meta["id"]), batch_keys(batch_id)["batch"]]:
            assert await client.expiretime(key) == until  # type: ignore[misc]
        await store.create_file(TENANT, "later.jsonl", "batch", _chunks("x"))  # kept 60 s
        for kind in ("files", "batches"):  # as long as what they list
            assert await client.expiretime(tenant_index_key(TENANT, kind)) == until  # type: ignore[misc]

    run_async(redis_port, body)


def test_an_ended_batch_is_kept_past_its_expires_at_and_listed_as_long(redis_port: int) -> None:
    """finish keeps a batch retention past its expires_at (past its end, if it ended late),
    and its tenant's index of batches as long."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 60)
        index = tenant_index_key(TENANT, "batches")
        late = await _batch(store, [_line(0)], window_s=-30)  # its window ended 30 s ago
        before = int(time.time())
        await store.finish(late)
        kept = await client.expiretime(batch_keys(late)["batch"])  # type: ignore[misc]
        assert before + 60 <= kept <= int(time.time()) + 60
        assert await client.expiretime(index) == kept  # type: ignore[misc]
        batch_id = await _batch(store, [_line(0)], window_s=3600)
        fields = await store.batch(batch_id)
        assert fields is not None
        output = {"id": "file-output-x", "tenant": TENANT, "batch": batch_id, "part": "output"}
        await store.add_file(output, float(fields["expires_at"]))  # as the runner, just before
        await store.finish(batch_id)
        until = int(float(fields["expires_at"])) + 60
        assert await client.expiretime(batch_keys(batch_id)["batch"]) == until  # type: ignore[misc]
        assert await client.expiretime(index) == until  # type: ignore[misc]
        # Its output file goes with it: not a day before, while the batch still names it.
        output_meta = file_keys("file-output-x")[0]
        assert await client.expiretime(output_meta) == until  # type: ignore[misc]

    run_async(redis_port, body)


def test_a_listing_skips_expired_objects_and_drops_them_from_the_index(redis_port: int) -> None:
    """Expired batches among live ones: every page but the last is full, has_more says
    whether another live one follows, and the expired ids leave the tenant's index."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        made = [await _batch(store, [_line(0)]) for _ in range(12)]
        live = made[::-1][:1] + made[::-1][8:]  # the newest, and the four oldest
        for batch_id in made:
            if batch_id not in live:
                await client.delete(batch_keys(batch_id)["batch"])  # as if expired
        request = _request_for(store)
        shown: list[str] = []
        after = None
        for _ in range(len(live)):
            page = await routes._listed(request, TENANT, routes.Page("batches", after, 2, 100))
            shown += [b["id"] for b in page["data"]]
            assert page["last_id"] == shown[-1]
            assert page["has_more"] == (len(shown) < len(live)), page
            if not page["has_more"]:
                break
            assert len(page["data"]) == 2
            after = page["last_id"]
        assert shown == live
        index = await client.zrange(tenant_index_key(TENANT, "batches"), 0, -1)
        assert sorted(i.decode() for i in index) == sorted(live)

    run_async(redis_port, body)


def _request_for(store: BatchStore) -> Request:
    state = types.SimpleNamespace(door=types.SimpleNamespace(batches=store))
    return cast(Request, types.SimpleNamespace(app=types.SimpleNamespace(state=state)))


Between = Callable[[list[str], dict[str, Any]], Awaitable[None]]


async def _made(store: BatchStore, count: int) -> list[str]:
    """`count` input files of the tenant, oldest first."""
    return [
        (await store.create_file(TENANT, "in.jsonl", "batch", _chunks("x")))["id"]
        for _ in range(count)
    ]


async def _delete_page_by_page(store: BatchStore, between: Between | None = None) -> list[str]:
    """Page the tenant's files two at a time, deleting each page's (then `between`, with the
    ids deleted so far and the page), to the end: the ids deleted, in order."""
    deleted: list[str] = []
    after = None
    while True:
        page = await routes._listed(_request_for(store), TENANT, routes.Page("files", after, 2, 9))
        for shown in page["data"]:
            await store.delete_file({"id": shown["id"], "tenant": TENANT})
            deleted.append(shown["id"])
        if between is not None:
            await between(deleted, page)
        if not page["has_more"]:
            return deleted
        after = page["last_id"]


def test_files_deleted_page_by_page_are_all_listed(redis_port: int) -> None:
    """An app deleting each page's files as it pages (the SDK's `for f in files.list():
    files.delete(f.id)`) goes on after a deleted id to the end, leaving no id behind."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        made = await _made(store, 7)
        assert await _delete_page_by_page(store) == made[::-1]
        page = await routes._listed(_request_for(store), TENANT, routes.Page("files", None, 2, 9))
        assert page["data"] == [] and not page["has_more"]
        assert await client.zcard(tenant_index_key(TENANT, "files")) == 0

    run_async(redis_port, body)


def test_a_listing_after_an_id_another_listing_dropped_goes_on_from_it(redis_port: int) -> None:
    """Two listers: an app pages its files and deletes each page's, while another listing of
    the tenant (a dashboard) drops the deleted ids from the index between its pages; the app
    still goes on to the end. An `after` that never was the tenant's is a 400 naming it."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        made = await _made(store, 7)

        async def another_listing(deleted: list[str], page: dict[str, Any]) -> None:
            other = await routes._listed(
                _request_for(store), TENANT, routes.Page("files", None, 9, 9)
            )
            assert [f["id"] for f in other["data"]] == made[-len(deleted) - 1 :: -1]
            assert await client.zscore(tenant_index_key(TENANT, "files"), page["last_id"]) is None

        deleted = await _delete_page_by_page(store, another_listing)
        assert deleted == made[::-1]
        gone = await client.keys(f"{tenant_index_key(TENANT, 'files')}:gone:*")
        assert gone and all(0 < t <= 2 * GONE_S for t in [await client.ttl(k) for k in gone])
        with pytest.raises(ApiError) as refused:
            await routes._listed(
                _request_for(store), TENANT, routes.Page("files", "file-never", 2, 9)
            )
        assert refused.value.status == 400
        assert "file-never" in refused.value.body["error"]["message"]

    run_async(redis_port, body)


def test_files_are_listed_oldest_first_and_by_purpose(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        inputs = [(await store.create_file(TENANT, "in.jsonl", "batch", _chunks("x")))["id"]]
        fields = {"tenant": TENANT, "filename": "o.jsonl", "bytes": "1", "created_at": "0"}
        output = {"id": "file-out", "purpose": "batch_output", "batch": "b", "part": "output"}
        await store.add_file(fields | output, time.time())
        inputs.append((await store.create_file(TENANT, "in.jsonl", "batch", _chunks("x")))["id"])

        async def listed(oldest_first: bool, purpose: str | None) -> list[str]:
            page = routes.Page("files", None, 9, 9, oldest_first, purpose)
            return [
                f["id"] for f in (await routes._listed(_request_for(store), TENANT, page))["data"]
            ]

        assert await listed(True, None) == [inputs[0], "file-out", inputs[1]]
        assert await listed(False, None) == [inputs[1], "file-out", inputs[0]]
        assert await listed(True, "batch") == inputs
        assert await listed(False, "batch_output") == ["file-out"]

    run_async(redis_port, body)
