"""Work items and completions a newer llmq wrote (a body field this version does not know):
the stream processor answers whoever waits on them instead of nobody, and settles the cost
an unreadable completion carries before it releases the request's hold."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from schemas.errors import ErrorCode, LlmqError
from schemas.names import DLQ, HEADER_REASON, RESULTS
from schemas.route import Route
from streams.salvage import Rejection, work_requester
from tests.unit.stages import (
    FailingSend,
    FakeLedger,
    Pipeline,
    admitted,
    metered,
    raw_request,
    result_of,
)

pytestmark = pytest.mark.timeout(60)

ERROR = LlmqError(ErrorCode.INTERNAL_ERROR, "x")


def _newer_work(cid: str = "req-1") -> dict[str, Any]:
    """A work item's JSON with a body field from a newer llmq."""
    data: dict[str, Any] = json.loads(admitted(raw_request(cid=cid)).model_dump_json())
    data["request"]["body"]["some_newer_field"] = 40
    return data


def _newer_completion(cost: float = 0.5) -> dict[str, Any]:
    """An answer's completion (metered at `cost`) whose work a newer llmq wrote."""
    data: dict[str, Any] = json.loads(metered(admitted(raw_request()), cost).model_dump_json())
    data["work"] = _newer_work()
    return data


@pytest.mark.parametrize("record", [_newer_work(), _newer_completion()], ids=["work", "completion"])
def test_the_requester_of_a_newer_record_is_found(record: dict[str, Any]) -> None:
    raw = json.dumps(record).encode()
    route = Route.model_validate(record.get("work", record)["route"])
    assert work_requester(ERROR, raw) == Rejection(ERROR, "req-1", "acme", "app.replies", route)


def test_a_newer_record_is_held_to_the_checks_of_a_request_salvaged() -> None:
    record = _newer_work()
    request = record["request"]
    request["correlation_id"], request["tenant"] = "a b\n", ["acme"]
    del request["reply_to"]
    raw = json.dumps(record).encode()
    route = Route.model_validate(record["route"])
    assert work_requester(ERROR, raw) == Rejection(ERROR, None, None, RESULTS, route)
    request["reply_to"] = "__consumer_offsets"
    assert work_requester(ERROR, json.dumps(record).encode()).reply_to == RESULTS


def test_a_newer_keyed_work_item_is_answered_by_dedupe() -> None:
    harness = Pipeline()
    raw = json.dumps(_newer_work()).encode()
    asyncio.run(harness.dedupe.on_keyed(b"k", raw))
    dead, reply = harness.send.sent
    assert (dead.topic, dead.value) == (DLQ, raw)
    assert reply.topic == "app.replies" and result_of(reply).correlation_id == "req-1"


def test_an_unreadable_completion_is_answered_after_its_cost_is_settled() -> None:
    """As a retriable internal error naming the cause: the request was valid (it was
    admitted) and its answer perhaps generated; invalid_request told its app not to retry."""
    ledger = FakeLedger()
    harness = Pipeline(ledger=ledger)
    raw = json.dumps(_newer_completion(0.5)).encode()
    asyncio.run(harness.complete.on_completion(b"k", raw))
    dead, reply = harness.send.sent
    assert (dead.topic, dead.value) == (DLQ, raw)
    assert dead.headers is not None and b"unreadable completion" in dead.headers[HEADER_REASON]
    result = result_of(reply)
    assert reply.topic == "app.replies" and result.correlation_id == "req-1"
    error = result.error
    assert error is not None and (error.code, error.retriable) == (ErrorCode.INTERNAL_ERROR, True)
    assert "newer llmq" in error.message and "upgrade the stream processors" in error.message
    assert ledger.calls == ["settle req-1 0.5", "release req-1"]


def test_an_unreadable_completion_whose_cost_cannot_be_read_keeps_its_hold() -> None:
    ledger = FakeLedger()
    harness = Pipeline(ledger=ledger)
    record = _newer_completion()
    record["metering"]["cost_usd"] = "a newer cost"
    asyncio.run(harness.complete.on_completion(b"k", json.dumps(record).encode()))
    assert [s.topic for s in harness.send.sent] == [DLQ, "app.replies"]
    assert ledger.calls == []


def test_an_unreadable_completion_whose_dead_letter_kafka_times_out_keeps_its_hold_too() -> None:
    """The dead letter is sent again; before, its failure reached the Guard, which
    dead-lettered the record a second time and answered with a release, and its copies
    were left waiting."""
    ledger = FakeLedger()
    send = FailingSend(DLQ, 1, KafkaTimeoutError())
    harness = Pipeline(ledger=ledger, send=send)
    for cid in ("req-1", "copy"):
        harness.on_request(None, raw_request(cid=cid, temperature=0))
    [sent] = send.sent
    send.sent.clear()
    record = _newer_completion() | {"work": json.loads(sent.value)}
    record["work"]["request"]["body"]["some_newer_field"] = 40
    record["metering"]["cost_usd"] = "a newer cost"
    asyncio.run(harness.complete.on_completion(sent.key, json.dumps(record).encode()))
    assert [s.topic for s in send.sent] == [DLQ, "app.replies", "app.replies"]
    assert ledger.calls == ["release copy"], "the copy's own hold goes, the generation's stays"
    assert harness.table == {}


def test_the_copies_of_an_unreadable_completion_share_its_failure() -> None:
    """Its requester was answered and its copies waited for ever (a Kafka app without a
    deadline): nothing settled the coalescing entry the record's key names."""
    harness = Pipeline()
    for cid in ("lead", "copy"):
        harness.on_request(None, raw_request(cid=cid, temperature=0))
    [sent] = harness.send.sent
    harness.send.sent.clear()
    record = json.loads(sent.value)
    record["request"]["body"]["some_newer_field"] = 40
    completion = _newer_completion() | {"work": record}
    asyncio.run(harness.complete.on_completion(sent.key, json.dumps(completion).encode()))
    answered = sorted(
        result_of(s).correlation_id or "" for s in harness.send.sent if s.topic != DLQ
    )
    assert answered == ["copy", "lead"]
    assert harness.table == {}
