"""The agents' error boundary: a failed record is dead-lettered and answered, however long
Kafka is away, since faust commits past whatever an agent raises."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError

from schemas.names import DLQ
from streams.guard import Guard
from streams.outbox import Outbox
from streams.refusals import Refusals
from tests.unit.stages import FailingSend, FakeSend, FakeStore, raw_request, result_of

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
