"""What a worker publishes when an outcome or a dead letter does not fit the record llmq sends
or its producer takes (a topic's max.message.bytes read at the start): the error that says
so, never a record the producer refuses, which would stop the worker at every start."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import ConsumerRecord

from llmq.record_limits import RECORD_LIMIT
from schemas.errors import ErrorCode, LlmqError
from schemas.names import COMPLETIONS, DLQ, HEADER_ORIGINAL_BYTES, HEADER_REASON
from schemas.request import ChatBody, ChatMessage
from schemas.work import PROMPT_NOT_CARRIED, UnsureAnswer, WorkItem
from tests.unit.stages import answer
from tests.unit.worker_fakes import (
    STANDARD,
    FakeConsumer,
    FakeEngine,
    FakeProducer,
    FlakyProducer,
    model_spec,
    run_worker,
    serve_one,
    until,
    work,
    work_with,
)
from workers import publish
from workers.inflight import InFlight
from workers.publish import Publisher, UnsendableRecordError
from workers.worker import Worker

pytestmark = pytest.mark.timeout(30)

LIMIT = 4_000


def _big_work(chars: int = 5_000) -> WorkItem:
    body = ChatBody(messages=[ChatMessage(role="user", content="y" * chars)])
    return WorkItem.model_validate_json(work_with({"body": body}))


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
    assert "(its max.message.bytes, 4000); its request alone does not fit" in (
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
    with pytest.raises(UnsendableRecordError, match=f"more than Kafka takes on {COMPLETIONS}"):
        _publish(LlmqError(ErrorCode.EXPIRED, "past its deadline"), limit=500)


def _dead_letter(
    producer: FakeProducer, record_limit: int = RECORD_LIMIT, dead_letter_limit: int = RECORD_LIMIT
) -> tuple[bytes, bytes]:
    """A record past LIMIT (its prompt) dead-lettered by a publisher told those limits: the
    record as it came, and the value sent."""
    raw = _big_work(8_000).model_dump_json().encode()
    record = ConsumerRecord("llmq.work.m.standard", 0, 7, 0, 0, b"k", raw, None, 0, 0, [])
    publisher = Publisher(producer, model_spec(), "w", record_limit, dead_letter_limit)
    error = LlmqError(ErrorCode.CRASH_LOOP, "took the worker down 3 times")
    asyncio.run(publisher.dead_letter(record, error))
    [(topic, value)] = producer.sent
    assert topic == DLQ
    return raw, value


def test_a_dead_letter_is_cut_to_what_the_producer_sends() -> None:
    """Cut, it fits, its length in a header, as the admission limit cuts one."""
    producer = FakeProducer(limit=LIMIT)
    raw, value = _dead_letter(producer, record_limit=LIMIT)
    assert producer.refused == []
    assert len(value) < len(raw) and raw.startswith(value)
    assert len(value) > LIMIT - 400, "cut to what fits, not far below"
    headers = dict(producer.headers[-1])
    assert headers[HEADER_ORIGINAL_BYTES] == str(len(raw)).encode()
    assert headers[HEADER_REASON] == b"took the worker down 3 times"


def test_a_dead_letter_is_cut_to_what_llmq_dlq_takes_where_it_takes_less() -> None:
    _, value = _dead_letter(FakeProducer(), dead_letter_limit=LIMIT)
    assert LIMIT - 400 < len(value) < LIMIT


def test_a_dead_letter_the_broker_did_not_take_is_sent_again() -> None:
    """As an outcome is: a broker restarting does not stop the worker."""
    producer = FlakyProducer(failures=1)
    _, value = _dead_letter(producer)
    assert producer.sent == [(DLQ, value)]


def test_a_dead_letter_the_broker_refuses_stops_the_worker_saying_so() -> None:
    """llmq.dlq's limit lowered since the start: the next start reads it."""
    producer = FakeProducer(limit=LIMIT, by_broker=True)
    with pytest.raises(UnsendableRecordError, match=f"-byte record on {DLQ}: .* reads the new"):
        _dead_letter(producer, dead_letter_limit=RECORD_LIMIT)


def test_a_record_that_fits_is_sent_as_it_is() -> None:
    raw = work()
    record = ConsumerRecord("llmq.work.m.standard", 0, 7, 0, 0, b"k", raw, None, 0, 0, [])
    producer = FakeProducer(limit=LIMIT)
    publisher = Publisher(producer, model_spec(), "w", LIMIT)
    asyncio.run(publisher.dead_letter(record, LlmqError(ErrorCode.INVALID_REQUEST, "bad")))
    assert producer.sent == [(DLQ, raw)]
    assert HEADER_ORIGINAL_BYTES not in dict(producer.headers[-1])


def test_an_answer_too_large_to_send_is_answered_with_that_error_and_metered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sending it would fail every time: it would hold its offset and its app for good."""
    monkeypatch.setattr(publish, "MAX_COMPLETION_BYTES", 2_500)
    producer = serve_one(work(), FakeEngine(text="x" * 1_000))
    [completion] = producer.completions()
    assert completion.response is None and completion.error is not None
    assert completion.error.code is ErrorCode.ANSWER_TOO_LARGE
    assert not completion.error.retriable
    assert "past the 2500 llmq sends" in completion.error.message
    [event] = producer.metering()  # the tokens it made are paid for all the same
    assert (event.outcome, event.completion_tokens) == ("answer_too_large", 3)
    assert completion.metering == event


def test_the_bound_is_on_the_records_bytes_not_its_characters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """5,000 characters of "\u00e9" are 10,000 bytes: the record passes 7,500 bytes in UTF-8
    while its text has fewer characters than that."""
    monkeypatch.setattr(publish, "MAX_COMPLETION_BYTES", 7_500)
    body = ChatBody(messages=[ChatMessage(role="user", content="\u00e9" * 5_000)])
    [completion] = serve_one(work_with({"body": body}), FakeEngine()).completions()
    assert completion.error is not None
    assert completion.error.code is ErrorCode.ANSWER_TOO_LARGE


def test_an_answer_past_its_topics_limit_is_answered_with_that_error_and_metered_so() -> None:
    """A topic set below the bound (read at the start): Kafka's refusal would come again on
    every resend. The answer's 6,000 characters do not fit in 4,000 bytes; the error that
    replaces it does, and its one metering event says what the tokens became."""
    producer = FakeProducer(limit=LIMIT)
    serve_one(work(), FakeEngine(text="x" * 2_000), producer=producer)
    assert producer.refused == [], "the producer is never handed what it would refuse"
    [completion] = producer.completions()
    assert completion.error is not None
    assert completion.error.code is ErrorCode.ANSWER_TOO_LARGE
    assert "more than Kafka takes on llmq.completions (its max.message.bytes, 4000)" in (
        completion.error.message
    )
    assert "ask for fewer max_tokens" in completion.error.message
    assert completion.work.request.body.messages[0].content == "a short prompt"
    [event] = producer.metering()
    assert completion.metering == event
    assert (event.outcome, event.completion_tokens) == ("answer_too_large", 3)


def test_a_request_too_large_for_its_topic_is_refused_unstarted_and_the_worker_goes_on() -> None:
    """Its prompt alone passes the topic's limit, so no outcome of it can carry it: it is
    not generated (nothing spent, nothing metered), its failure comes back without the
    prompt (it stopped the worker at every start before), and the next record is served."""
    consumer, producer = FakeConsumer(), FakeProducer(limit=LIMIT)
    big = ChatBody(messages=[ChatMessage(role="user", content="y" * 5_000)])
    consumer.add(STANDARD, [work_with({"body": big}), work(n=1)])
    engine = FakeEngine()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: consumer.committed.get(STANDARD) == 2)
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario)
    failed, served = producer.completions()
    assert failed.error is not None and failed.error.code is ErrorCode.ANSWER_TOO_LARGE
    assert "(its max.message.bytes, 4000): it was not generated; send a shorter prompt" in (
        failed.error.message
    )
    assert [m.content for m in failed.work.request.body.messages] == [PROMPT_NOT_CARRIED]
    assert failed.work.request.correlation_id == "standard-0"
    assert served.error is None and served.work.request.correlation_id == "standard-1"
    assert [rid.split("@")[0] for rid, _, _ in engine.started] == ["standard-1"]
    assert [e.outcome for e in producer.metering()] == ["ok"]


def test_tokens_spent_on_a_failure_too_large_are_metered_under_its_own_outcome() -> None:
    """A cancelled generation's tokens are metered as cancelled, whatever its record became;
    an engine's failure, never metered, is not metered for being too large either."""
    for code, metered in ((ErrorCode.CANCELLED, ["cancelled"]), (ErrorCode.ENGINE_ERROR, [])):
        producer = FakeProducer(limit=LIMIT)
        state = InFlight.from_work(_big_work(), "r")
        state.prompt_tokens, state.completion_tokens = 700, 5
        publisher = Publisher(producer, model_spec(), "w", LIMIT)
        asyncio.run(publisher.publish(state.failure(LlmqError(code, "x"), "w", 0.0), state))
        [completion] = producer.completions()
        assert completion.error is not None
        assert completion.error.code is ErrorCode.ANSWER_TOO_LARGE
        assert [e.outcome for e in producer.metering()] == metered


def test_a_record_the_broker_refuses_itself_stops_the_worker_and_stays_uncommitted() -> None:
    """The topic's limit lowered since the start: the producer can no longer write that
    partition, so the worker stops, saying why; its next start reads the new limit."""
    consumer = FakeConsumer()
    producer = FakeProducer(limit=2_500, by_broker=True)
    consumer.add(STANDARD, [work()])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await asyncio.Event().wait()  # the worker stops on its own

    with pytest.raises(publish.UnsendableRecordError, match="lower than when this worker started"):
        run_worker(consumer, producer, lambda: FakeEngine(text="x" * 1_000), scenario)
    assert [topic for topic, _ in producer.refused] == [COMPLETIONS]
    assert consumer.committed.get(STANDARD, 0) == 0  # the next to read is still the record


def test_an_escalations_answer_too_large_with_its_stand_in_goes_without_it() -> None:
    """The unsure answer an escalation carries (WorkItem.unsure) answers only where the
    escalation ends without one: the big model's answer, paid for, was replaced by
    answer_too_large, and the unsure answer served instead."""
    unsure = UnsureAnswer(model="small", response=answer("z" * 3_000), mean_logprob=-2.0)
    producer = FakeProducer(limit=LIMIT)
    serve_one(work_with({}, unsure=unsure), FakeEngine(text="x" * 200), producer=producer)
    [completion] = producer.completions()
    assert completion.error is None and completion.response is not None
    assert completion.work.unsure is None


def test_a_failure_too_large_with_its_stand_in_goes_without_it_rather_than_stop() -> None:
    """Past the room of a record even without its prompt, the failure of an escalation goes
    back without the unsure answer it carries: a record the producer refuses would stop the
    worker at every start."""
    unsure = UnsureAnswer(model="small", response=answer("z" * 6_000), mean_logprob=-2.0)
    state = InFlight.from_work(_big_work().model_copy(update={"unsure": unsure}), "r")
    producer = FakeProducer(limit=LIMIT)
    publisher = Publisher(producer, model_spec(), "w", LIMIT)
    failed = state.failure(LlmqError(ErrorCode.EXPIRED, "past its deadline"), "w", 0.0)
    asyncio.run(publisher.publish(failed, state))
    [completion] = producer.completions()
    assert completion.error is not None and completion.work.unsure is None


def test_an_escalations_answer_too_large_even_alone_goes_as_the_error_without_its_stand_in() -> (
    None
):
    """The answer_too_large failures were made from the work with its stand-in, which alone
    passed the record: the worker stopped at every start."""
    unsure = UnsureAnswer(model="small", response=answer("z" * 3_000), mean_logprob=-2.0)
    producer = FakeProducer(limit=LIMIT)
    serve_one(work_with({}, unsure=unsure), FakeEngine(text="x" * 2_000), producer=producer)
    [completion] = producer.completions()
    assert completion.error is not None
    assert completion.error.code is ErrorCode.ANSWER_TOO_LARGE
    assert completion.work.unsure is None
