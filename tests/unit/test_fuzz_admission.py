"""Admission under fuzzing (tests/hostile.py): no record makes a stage raise; every record
not admitted is dead-lettered once with its reason, and answered once, naming the offending
field, when it names who waits; a valid request is admitted unchanged."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from aiokafka import TopicPartition
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas.catalog import Catalog
from schemas.errors import ErrorCode
from schemas.lanes import Lane
from schemas.names import (
    COMPLETIONS,
    DLQ,
    HEADER_ERROR_CODE,
    HEADER_ORIGINAL_BYTES,
    HEADER_REASON,
    HEADER_SOURCE_TOPIC,
    REQUESTS,
    REQUESTS_KEYED,
    work_topic,
)
from schemas.request import MAX_RECORD_BYTES, InferenceRequest
from schemas.work import WorkItem
from streams.admission import Admission
from streams.admit import admit
from streams.outbox import Outbox
from streams.salvage import Rejection
from tests.hostile import (
    Hostile,
    at_the_size_limit,
    envelope,
    hostile_records,
    json_values,
    not_a_request,
    valid_requests,
    with_field,
    with_key,
    with_text,
)
from tests.unit.stages import FakeSend, FakeStore, Pipeline, Sent, result_of
from tests.unit.worker_fakes import (
    MODEL,
    FakeConsumer,
    FakeEngine,
    FakeProducer,
    MemoryStarts,
    model_spec,
)
from workers.worker import Worker

pytestmark = pytest.mark.timeout(60)

REPLY_TO = "app.replies"
CATALOG = Catalog.builtin()
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
keys = st.one_of(st.none(), st.binary(max_size=16))
FOUND = [
    Hostile(None, None, None),  # a tombstone: admission raised, faust skipped the record
    with_field(REPLY_TO, "created_at", math.inf),  # admitted; downstream read Infinity as null
    with_field(REPLY_TO, "deadline", math.inf),
    with_field(REPLY_TO, "reply_to", ".."),  # admitted, though Kafka has no such topic
    with_field(REPLY_TO, "reply_to", "__consumer_offsets"),  # admitted, to answer on Kafka's own
    with_field(REPLY_TO, "reply_to", "llmq.requests.keyed"),  # or on one that llmq consumes
    with_key(REPLY_TO, "body", "\ud800"),  # the error named no field
    with_text(REPLY_TO, "body.max_tokens", "1" + "0" * 5000),  # unreadable: nobody answered
]
"""Records that broke admission before; tried first, on every run."""
Test = TypeVar("Test", bound=Callable[..., None])


def _found_first(test: Test) -> Test:
    for hostile in FOUND:
        test = example(hostile, b"k")(test)
    return test


unreadable = st.one_of(
    not_a_request().map(lambda h: h.raw), json_values.map(json.dumps).map(str.encode)
)


def _admission(key: bytes | None, raw: bytes | None) -> tuple[FakeStore, FakeSend]:
    store, send = FakeStore(), FakeSend()
    # faust hands a tombstone's value over as None, whatever the handler's annotation says.
    asyncio.run(Admission(CATALOG, Outbox(store, send)).on_request(key, raw))
    return store, send


def _dead_letter(send: FakeSend, key: bytes | None, raw: bytes | None, source: str) -> Sent:
    """The one DLQ record, checked: the raw record (cut to the admission limit, a tombstone
    as empty), its key, and the headers."""
    [dlq] = [s for s in send.sent if s.topic == DLQ]
    value = raw or b""
    assert (dlq.key, dlq.value) == (key, value[:MAX_RECORD_BYTES])
    assert dlq.headers is not None
    if len(value) > MAX_RECORD_BYTES:
        assert dlq.headers[HEADER_ORIGINAL_BYTES] == str(len(value)).encode()
    assert dlq.headers[HEADER_SOURCE_TOPIC] == source.encode()
    assert dlq.headers[HEADER_REASON]
    ErrorCode(dlq.headers[HEADER_ERROR_CODE].decode())
    return dlq


@FUZZ
@_found_first
@given(hostile_records(REPLY_TO), keys)
def test_admit_refuses_every_hostile_record_and_finds_who_waits(
    hostile: Hostile, key: bytes | None
) -> None:
    out = admit(hostile.raw, CATALOG)
    assert isinstance(out, Rejection), out
    assert out.correlation_id == hostile.correlation_id
    if hostile.correlation_id is not None:
        assert out.reply_to == hostile.reply_to
    if hostile.blame:
        assert any(word in out.error.message for word in hostile.blame), out.error.message


@FUZZ
@_found_first
@given(hostile_records(REPLY_TO), keys)
def test_admission_dead_letters_each_hostile_record_once_and_answers_who_waits(
    hostile: Hostile, key: bytes | None
) -> None:
    store, send = _admission(key, hostile.raw)
    dlq = _dead_letter(send, key, hostile.raw, REQUESTS)
    assert dlq.headers is not None
    code = ErrorCode(dlq.headers[HEADER_ERROR_CODE].decode())
    assert code is not ErrorCode.INTERNAL_ERROR, dlq.headers[HEADER_REASON]
    replies = [s for s in send.sent if s.topic != DLQ]
    assert not [s for s in replies if s.topic == REQUESTS_KEYED]
    if hostile.correlation_id is None:
        assert (replies, store.results) == ([], {})
        return
    # One error reply: stored for its id, and published when the reply topic is usable.
    assert [s.topic for s in replies] == ([] if hostile.reply_to is None else [hostile.reply_to])
    assert list(store.results) == [hostile.correlation_id]
    result = store.results[hostile.correlation_id]
    for sent in replies:
        assert sent.key == hostile.correlation_id.encode()
        assert result_of(sent) == result
    assert result.status == "error" and result.error is not None
    assert result.error.code is code
    assert result.error.message == dlq.headers[HEADER_REASON].decode()


@FUZZ
@given(valid_requests(), keys)
def test_a_valid_request_is_admitted_unchanged(data: dict[str, Any], key: bytes | None) -> None:
    raw = json.dumps(data).encode()
    request = InferenceRequest.model_validate(data)
    work = admit(raw, CATALOG)
    assert isinstance(work, WorkItem), work
    assert work.request == request
    store, send = _admission(key, raw)
    [sent] = send.sent
    assert sent.topic == REQUESTS_KEYED
    assert WorkItem.model_validate_json(sent.value).request == request, "lost on the wire"
    assert store.results == {}


def test_a_utf8_bom_before_a_request_is_allowed() -> None:
    work = admit(b"\xef\xbb\xbf" + json.dumps(envelope(REPLY_TO)).encode(), CATALOG)
    assert isinstance(work, WorkItem), work


@pytest.mark.parametrize(
    ("hostile", "admitted"),
    at_the_size_limit(REPLY_TO),
    ids=["valid-at-limit", "valid-over", "invalid-at-limit", "invalid-over"],
)
def test_records_at_and_over_the_size_limit(hostile: Hostile, admitted: bool) -> None:
    store, send = _admission(b"k", hostile.raw)
    if admitted:
        assert [s.topic for s in send.sent] == [REQUESTS_KEYED]
        return
    dlq = _dead_letter(send, b"k", hostile.raw, REQUESTS)
    assert dlq.headers is not None
    reason = dlq.headers[HEADER_REASON].decode()
    assert any(word in reason for word in hostile.blame), reason
    [reply] = [s for s in send.sent if s.topic != DLQ]
    assert reply.topic == REPLY_TO
    assert set(store.results) == {hostile.correlation_id}


@FUZZ
@given(unreadable, keys)
def test_dedupe_and_complete_dead_letter_unreadable_records(
    raw: bytes | None, key: bytes | None
) -> None:
    harness = Pipeline()
    asyncio.run(harness.dedupe.on_keyed(key, raw))
    _dead_letter(harness.send, key, raw, REQUESTS_KEYED)
    harness.send.sent.clear()
    asyncio.run(harness.complete.on_completion(key, raw))
    _dead_letter(harness.send, key, raw, COMPLETIONS)
    assert len(harness.send.sent) == 1, "nobody to answer"
    assert harness.store.results == {}


@settings(FUZZ, max_examples=100)
@given(unreadable)
def test_the_worker_dead_letters_unreadable_work_items_and_commits_them(raw: bytes | None) -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    tp = TopicPartition(work_topic(MODEL, Lane.BATCH), 0)
    consumer.add(tp, [b""])
    [record] = consumer.logs[tp]
    consumer.logs[tp] = [dataclasses.replace(record, value=raw)]  # None: a tombstone

    async def main() -> None:
        worker = Worker(
            model_spec(),
            FakeEngine(),
            consumer,
            producer,
            worker_id="w",
            commit_interval_s=0,
            starts=MemoryStarts(),
        )
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        async with asyncio.timeout(10):
            while consumer.committed != {tp: 1}:  # noqa: ASYNC110 -- polls the fakes' plain state
                await asyncio.sleep(0.002)
        stop.set()
        await running

    asyncio.run(main())
    assert producer.sent == [(DLQ, raw or b"")]  # the DLQ's form of a tombstone, as streams
