"""A work item a newer llmq wrote (a body field this worker does not know) is dead-lettered
and answered: a retriable failure that carries the work as it came back to the stream
processor that wrote it, which can read it. A field of the work itself that this worker
does not know (a newer stream processor's state) comes back in its completion."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from schemas.errors import ErrorCode
from schemas.lanes import Lane
from schemas.names import COMPLETIONS, DLQ, METERING
from schemas.work import Completion, UnsureAnswer
from tests.unit.stages import answer
from tests.unit.worker_fakes import (
    MODEL,
    STANDARD,
    FakeConsumer,
    FakeEngine,
    FakeProducer,
    run_worker,
    until,
    work,
)
from workers.worker import Worker

pytestmark = pytest.mark.timeout(30)


def _newer(n: int, prompt: str = "a short prompt") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(work(Lane.STANDARD, n))
    data["request"]["body"]["messages"][0]["content"] = prompt
    data["request"]["body"]["some_newer_field"] = 40
    return data


def _serve(values: list[bytes], producer: FakeProducer) -> None:
    """Serve the records to their commit."""
    consumer = FakeConsumer()
    consumer.add(STANDARD, values)

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: consumer.committed == {STANDARD: len(values)})
        stop.set()

    run_worker(consumer, producer, FakeEngine, scenario)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"a key written twice: {names}"
    return dict(pairs)


def test_the_fields_of_a_newer_stream_processor_come_back_in_the_completion() -> None:
    """Its state, in the work item, its route or the unsure answer an escalation carries:
    dropped, the stream processor lost what it relies on (a failed escalation answered an
    error instead of the unsure answer)."""
    producer = FakeProducer()
    unsure = UnsureAnswer(model=MODEL, response=answer("maybe"), mean_logprob=-2.0)
    newer: dict[str, Any] = json.loads(work(Lane.STANDARD, 1, shown=True, unsure=unsure))
    newer["some_newer_state"] = {"seen": [1, 2]}
    newer["unsure"]["some_newer_score"] = 0.25
    newer["route"]["some_newer_step"] = "tier-3"
    _serve([json.dumps(newer).encode()], producer)
    [echoed] = (v for t, v in producer.sent if t == COMPLETIONS)
    served = json.loads(echoed, object_pairs_hook=_unique_keys)
    assert served["error"] is None and served["response"] is not None
    assert served["work"] == newer


def test_a_newer_work_item_is_dead_lettered_and_answered_through_its_writer() -> None:
    producer = FakeProducer()
    newer = _newer(1)
    _serve([json.dumps(newer).encode(), work(Lane.STANDARD, 2)], producer)
    topics = [topic for topic, _ in producer.sent]
    assert topics.count(DLQ) == 1 and topics.count(METERING) == 1  # the readable one's
    failed, served = (json.loads(v) for t, v in producer.sent if t == COMPLETIONS)
    assert failed["work"] == newer
    assert failed["worker"] == "w" and failed["error"]["retriable"]
    assert failed["error"]["code"] == ErrorCode.INTERNAL_ERROR.value
    assert "newer llmq" in failed["error"]["message"]
    # The writer, which knows the field, reads it as a Completion.
    del failed["work"]["request"]["body"]["some_newer_field"]
    assert Completion.model_validate(failed).work.request.correlation_id == "standard-1"
    assert served["work"]["request"]["correlation_id"] == "standard-2"


@pytest.mark.parametrize("cid", ["a b\n", 7, None])
def test_a_record_naming_no_sane_request_is_only_dead_lettered(cid: object) -> None:
    producer = FakeProducer()
    newer = _newer(1)
    newer["request"]["correlation_id"] = cid
    _serve([json.dumps(newer).encode()], producer)
    assert [topic for topic, _ in producer.sent] == [DLQ]


def test_an_answer_too_large_to_send_is_left_to_the_dead_letter() -> None:
    """The worker serves on: sent, it would stop the worker at every start."""
    producer = FakeProducer(limit=4_000)
    value = json.dumps(_newer(1, "x" * 3_900)).encode()
    _serve([value, work(Lane.STANDARD, 2)], producer)
    assert [topic for topic, _ in producer.sent] == [DLQ, COMPLETIONS, METERING]
    assert producer.completions()[0].work.request.correlation_id == "standard-2"
