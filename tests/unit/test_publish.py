"""What a worker publishes when an outcome or a dead letter does not fit the record its producer
sends (a topic's max.message.bytes read at the start): never a record the producer refuses,
which would stop the worker at every start. The worker's own path is in test_worker.py."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import ConsumerRecord

from schemas.errors import ErrorCode, LlmqError
from schemas.names import COMPLETIONS, DLQ, HEADER_ORIGINAL_BYTES, HEADER_REASON
from schemas.request import ChatBody, ChatMessage
from schemas.work import PROMPT_NOT_CARRIED, WorkItem
from tests.unit.worker_fakes import FakeProducer, model_spec, work
from workers.inflight import InFlight
from workers.publish import Publisher, RecordRefusedError

pytestmark = pytest.mark.timeout(30)

LIMIT = 2_500


def _big_work(chars: int = 3_000) -> WorkItem:
    item = WorkItem.model_validate_json(work())
    body = ChatBody(messages=[ChatMessage(role="user", content="y" * chars)])
    return item.model_copy(update={"request": item.request.model_copy(update={"body": body})})


def _publish(failure: LlmqError, limit: int = LIMIT) -> FakeProducer:
    producer = FakeProducer(limit=limit)
    state = InFlight.from_work(_big_work(), "r")
    publisher = Publisher(producer, model_spec(), "w", limit)
    asyncio.run(publisher.publish(state.failure(failure, "w", 0.0), state))
    return producer


def test_a_failure_of_a_request_too_large_for_the_topic_comes_back_without_its_prompt() -> None:
    producer = _publish(LlmqError(ErrorCode.EXPIRED, "past its deadline"))
    assert producer.refused == []
    [completion] = producer.completions()  # the stream processor reads it as any other
    assert completion.error is not None
    assert completion.error.code is ErrorCode.ANSWER_TOO_LARGE
    assert not completion.error.retriable, "nothing may generate from a request without prompt"
    assert completion.error.message.startswith("the record of its expired failure is ")
    assert "(its max.message.bytes, 2500); its request alone does not fit" in (
        completion.error.message
    )
    body = completion.work.request.body
    assert [(m.role, m.content) for m in body.messages] == [("user", PROMPT_NOT_CARRIED)]
    assert completion.work.request.correlation_id == "standard-0"
    assert completion.work.fingerprint == f"{0:064d}", "coalesced copies are found by it"


def test_a_superseded_outcome_too_large_stays_superseded() -> None:
    """It answers nobody (the cache did): turned into an error, it would answer twice."""
    [completion] = _publish(LlmqError(ErrorCode.SUPERSEDED, "the cache answered")).completions()
    assert completion.error is not None and completion.error.code is ErrorCode.SUPERSEDED
    assert completion.work.request.body.messages[0].content == PROMPT_NOT_CARRIED


def test_a_limit_too_small_for_any_failure_stops_the_worker_saying_so() -> None:
    with pytest.raises(RecordRefusedError, match=f"more than Kafka takes on {COMPLETIONS}"):
        _publish(LlmqError(ErrorCode.EXPIRED, "past its deadline"), limit=500)


def test_a_dead_letter_is_cut_to_what_the_producer_sends() -> None:
    """The record as it came is past the limit (its prompt); cut, it fits, its length in a
    header, as the admission limit cuts one."""
    raw = _big_work(5_000).model_dump_json().encode()
    record = ConsumerRecord("llmq.work.m.standard", 0, 7, 0, 0, b"k", raw, None, 0, 0, [])
    producer = FakeProducer(limit=LIMIT)
    publisher = Publisher(producer, model_spec(), "w", LIMIT)
    error = LlmqError(ErrorCode.CRASH_LOOP, "took the worker down 3 times")
    asyncio.run(publisher.dead_letter(record, error))
    assert producer.refused == []
    [(topic, value)] = producer.sent
    assert topic == DLQ
    assert len(value) < len(raw) and raw.startswith(value)
    assert len(value) > LIMIT - 400, "cut to what fits, not far below"
    headers = dict(producer.headers[-1])
    assert headers[HEADER_ORIGINAL_BYTES] == str(len(raw)).encode()
    assert headers[HEADER_REASON] == b"took the worker down 3 times"


def test_a_record_that_fits_is_sent_as_it_is() -> None:
    raw = work()
    record = ConsumerRecord("llmq.work.m.standard", 0, 7, 0, 0, b"k", raw, None, 0, 0, [])
    producer = FakeProducer(limit=LIMIT)
    publisher = Publisher(producer, model_spec(), "w", LIMIT)
    asyncio.run(publisher.dead_letter(record, LlmqError(ErrorCode.INVALID_REQUEST, "bad")))
    assert producer.sent == [(DLQ, raw)]
    assert HEADER_ORIGINAL_BYTES not in dict(producer.headers[-1])
