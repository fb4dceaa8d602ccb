"""The agents' error boundary: a failed record is dead-lettered and answered, however long
Kafka is away, since faust commits past whatever an agent raises; each failure is logged
naming its request, Kafka's as a warning, and the app is told its kind, not its text."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError

from schemas.names import DLQ, REQUESTS, REQUESTS_KEYED
from schemas.request import RecordRefusedError
from streams.guard import Guard
from streams.outbox import Outbox
from streams.refusals import Refusals
from streams.resend import ACK_TIMEOUT_S, UNACKNOWLEDGED
from tests.unit.stages import (
    FailingSend,
    FakeSend,
    FakeStore,
    Pipeline,
    raw_request,
    result_of,
)

pytestmark = pytest.mark.timeout(60)


async def _fails() -> None:
    raise RuntimeError("a handler's bug")


def _guard(send: FakeSend) -> Guard:
    return Guard(Refusals(Outbox(FakeStore(), send)))


def test_a_dead_letter_kafka_refuses_is_sent_again_until_it_takes_it() -> None:
    send = FailingSend("", 2, KafkaTimeoutError())  # the dead letter, twice
    raw = raw_request(cid="r1")
    asyncio.run(_guard(send).run("llmq.requests", b"k", raw, _fails))
    dead, reply = send.sent
    assert (dead.topic, dead.value) == (DLQ, raw)
    assert result_of(reply).correlation_id == "r1" and send.failures == 0


@pytest.mark.parametrize(
    "error", [ValueError("not Kafka's"), TopicAuthorizationFailedError("llmq.dlq")]
)
def test_a_dead_letter_failing_for_good_is_not_tried_for_ever(error: Exception) -> None:
    send = FailingSend("", 1, error)
    with pytest.raises(type(error)):
        asyncio.run(_guard(send).run("llmq.requests", b"k", raw_request(), _fails))


def test_only_the_step_kafka_failed_is_sent_again() -> None:
    """The reply failed, not the dead letter: each try dead-lettered the record anew."""
    send = FailingSend("app.", 2, KafkaTimeoutError())
    asyncio.run(_guard(send).run("llmq.requests", b"k", raw_request(cid="r1"), _fails))
    assert [s.topic for s in send.sent] == [DLQ, "app.replies"]


def _said(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def test_a_send_kafka_did_not_acknowledge_is_a_warning_naming_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not an ERROR with a traceback ending in a bare TimeoutError, per record, naming no
    request; the app is told the kind of failure."""
    send = FailingSend(REQUESTS_KEYED, 1, TimeoutError())  # admission's send, as FaustSend's
    harness = Pipeline(send=send)
    harness.on_request(b"k", raw_request(cid="r1"))
    [said] = _said(caplog, "streams.guard")
    assert said.levelno == logging.WARNING and not said.exc_info
    assert said.getMessage() == (
        f"dead-lettering a record of {REQUESTS} (r1): Kafka did not acknowledge a send "
        f"within {ACK_TIMEOUT_S:g} s"
    )
    error = harness.store.results["r1"].error
    assert error is not None and error.retriable
    assert error.message == f"the stream processor failed: {UNACKNOWLEDGED}"


def test_a_bug_is_an_error_with_its_traceback_and_the_app_is_told_its_kind_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    send = FakeSend()
    asyncio.run(_guard(send).run(REQUESTS, b"k", raw_request(cid="r1"), _fails))
    [said] = _said(caplog, "streams.guard")
    assert said.levelno == logging.ERROR and said.exc_info
    assert said.getMessage() == (
        f"failed on a record of {REQUESTS} (r1); dead-lettering it: RuntimeError: a handler's bug"
    )
    reply = result_of(send.sent[-1])
    assert reply.error is not None
    assert reply.error.message == "the stream processor failed: RuntimeError"


def test_a_record_too_large_for_its_topic_is_refused_naming_its_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = RecordRefusedError("llmq.work.x", 2_000_000, 1_000_000)

    async def too_large() -> None:
        raise refused

    asyncio.run(_guard(FakeSend()).run(REQUESTS, b"k", raw_request(cid="r1"), too_large))
    [said] = _said(caplog, "streams.guard")
    assert said.levelno == logging.WARNING
    assert said.getMessage() == f"refused a record of {REQUESTS} (r1): {refused.message}"


@pytest.mark.parametrize(
    ("error", "why"),
    [(TimeoutError(), UNACKNOWLEDGED), (KafkaTimeoutError(), "KafkaTimeoutError")],
)
def test_each_send_tried_again_is_a_warning_naming_its_request(
    caplog: pytest.LogCaptureFixture, error: Exception, why: str
) -> None:
    """Not an ERROR at every try, naming no request."""
    send = FailingSend("app.", 1, error)  # the error reply
    asyncio.run(_guard(send).run(REQUESTS, b"k", raw_request(cid="r1"), _fails))
    [said] = _said(caplog, "streams.resend")
    assert said.levelno == logging.WARNING
    assert said.getMessage() == f"could not send the error reply to r1; again in 0.5 s: {why}"


def test_a_dead_letter_tried_again_names_its_record(caplog: pytest.LogCaptureFixture) -> None:
    send = FailingSend(DLQ, 1, TimeoutError())
    asyncio.run(_guard(send).run(REQUESTS, b"k", b"not json", _fails))
    [said] = _said(caplog, "streams.resend")
    assert said.getMessage() == (
        f"could not send the dead letter of a record of {REQUESTS} (no readable id); again "
        f"in 0.5 s: {UNACKNOWLEDGED}"
    )
