"""Topics the stream processor writes that take fewer bytes a record than it sends: the
limits it learns from the broker's refusals (streams/limits.py), and what each stage makes
of a record refused (the request's error reply, an answer replaced by why, a dead letter
cut to fit), never a failure of the stream processor."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from llmq.record_limits import RECORD_LIMIT, REREAD_S, record_size
from schemas.dlq import dead_letter
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.names import DLQ, HEADER_ORIGINAL_BYTES, REQUESTS_KEYED, work_topic
from schemas.request import RecordRefusedError
from streams.limits import TopicLimits
from streams.outbox import Outbox
from tests.unit.stages import (
    FakeSend,
    FakeStore,
    Pipeline,
    admitted,
    completion,
    raw_request,
    result_of,
)

TOPIC = "llmq.some"


class Brokers:
    """Topic limits as the brokers would say them; counts the reads."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.reads = 0

    async def __call__(self, topic: str) -> int | None:
        assert topic == TOPIC
        self.reads += 1
        await asyncio.sleep(0)
        return self.limit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _record(size: int) -> bytes:
    """A value whose record (no key, no headers) is `size` bytes as a producer reckons it."""
    value = b"x" * size
    return value[: size - (record_size(None, value) - size)]


def test_a_topic_never_refused_is_not_read_nor_reckoned() -> None:
    brokers = Brokers(10_000)
    limits = TopicLimits(brokers)
    asyncio.run(limits.check(TOPIC, None, _record(50_000), {}))
    assert brokers.reads == 0


def test_a_refusal_reads_the_limit_then_refuses_larger_records_unsent() -> None:
    brokers, clock = Brokers(10_000), Clock()
    limits = TopicLimits(brokers, clock)

    async def run() -> tuple[RecordRefusedError | None, RecordRefusedError | None]:
        larger = await limits.refused(TOPIC, None, _record(12_000), {}, again=False)
        clock.now += 1
        beside = await limits.refused(TOPIC, None, _record(500), {}, again=False)
        await limits.check(TOPIC, None, _record(9_000), {})  # fits: sent
        with pytest.raises(RecordRefusedError) as unsent:
            await limits.check(TOPIC, None, _record(12_000), {})
        assert unsent.value.limit == 10_000
        return larger, beside

    larger, beside = asyncio.run(run())
    assert larger is not None and larger.code is ErrorCode.PROMPT_TOO_LARGE
    assert larger.limit == 10_000
    assert "12000 bytes; Kafka refuses it on llmq.some (it takes at most 10000" in larger.message
    assert beside is None  # refused beside a larger one: sent once more
    assert brokers.reads == 2  # each refusal reads; the checks within REREAD_S do not


def test_records_refused_together_read_the_limit_once() -> None:
    brokers = Brokers(10_000)
    limits = TopicLimits(brokers, Clock())

    async def run() -> list[RecordRefusedError | None]:
        return await asyncio.gather(
            *(limits.refused(TOPIC, None, _record(n), {}, again=False) for n in (500, 12_000))
        )

    small, large = asyncio.run(run())
    assert small is None and large is not None
    assert brokers.reads == 1


def test_a_limit_raised_again_takes_the_record_and_the_topic_is_forgotten() -> None:
    brokers, clock = Brokers(10_000), Clock()
    limits = TopicLimits(brokers, clock)

    async def run() -> None:
        await limits.refused(TOPIC, None, _record(12_000), {}, again=False)
        brokers.limit = 5_000_000
        with pytest.raises(RecordRefusedError):  # read within REREAD_S: not read again
            await limits.check(TOPIC, None, _record(12_000), {})
        clock.now += REREAD_S
        await limits.check(TOPIC, None, _record(12_000), {})
        assert brokers.reads == 2
        await limits.check(TOPIC, None, _record(2_000_000), {})  # no limit known: not read
        assert brokers.reads == 2

    asyncio.run(run())


def test_refused_twice_or_with_the_limit_unread_it_is_refused_all_the_same() -> None:
    limits = TopicLimits(Brokers(None))

    async def run() -> tuple[RecordRefusedError | None, RecordRefusedError | None]:
        first = await limits.refused(TOPIC, None, _record(12_000), {}, again=False)
        second = await limits.refused(TOPIC, None, _record(12_000), {}, again=True)
        return first, second

    first, second = asyncio.run(run())
    assert first is None  # within the last known (RECORD_LIMIT at first): once more
    assert second is not None and second.limit is None
    assert "(past what it takes: max.message.bytes)" in second.message


class LimitedSend(FakeSend):
    """Refuses a record past its topic's limit as FaustSend does."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        super().__init__()
        self.limits = limits

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
        partition: int | None = None,
    ) -> None:
        size = record_size(key, value, list((headers or {}).items()))
        limit = self.limits.get(topic, RECORD_LIMIT)
        if size > limit:
            raise RecordRefusedError(topic, size, limit)
        await super().__call__(topic, key, value, headers, partition)


LONG = "the quick brown fox jumps over the lazy dog. " * 300
"""A question whose records are past 10,000 bytes."""


@pytest.mark.parametrize(
    "topic", [REQUESTS_KEYED, work_topic("smollm2-135m", Lane.INTERACTIVE)], ids=["keyed", "work"]
)
def test_a_request_too_large_for_a_topic_on_its_way_is_answered_prompt_too_large(
    topic: str,
) -> None:
    """Refused at admission's re-keying or at dedupe's hand-over to the engines: its reply
    names the topic and its limit, final (not retriable), and the coalescing entry is gone,
    so a copy sent later is not left waiting on a generation that never comes."""
    send = LimitedSend({topic: 10_000})
    pipeline = Pipeline(send=send)
    pipeline.on_request(b"k", raw_request("big", messages=[{"role": "user", "content": LONG}]))
    [reply] = [s for s in send.sent if s.topic == "app.replies"]
    result = result_of(reply)
    assert result.correlation_id == "big" and result.error is not None
    assert result.error.code == ErrorCode.PROMPT_TOO_LARGE.value
    assert not result.error.retriable
    assert f"Kafka refuses it on {topic} (it takes at most 10000" in result.error.message
    assert [s.topic for s in send.sent].count(DLQ) == 1
    assert pipeline.table == {}


def test_an_answer_too_large_for_its_reply_topic_is_replaced_by_why() -> None:
    """The app learns why instead of waiting; the stored result stays the answer."""
    send = LimitedSend({"app.replies": 2_000})
    pipeline = Pipeline(send=send)
    work = admitted(raw_request("r1"))
    pipeline.on_completion(completion(work, "word " * 1_000))
    [reply] = [s for s in send.sent if s.topic == "app.replies"]
    result = result_of(reply)
    assert result.correlation_id == "r1" and result.error is not None
    assert result.error.code == ErrorCode.ANSWER_TOO_LARGE.value
    assert result.error.message.startswith("the answer was not delivered: the record is ")
    assert "Kafka refuses it on app.replies (it takes at most 2000" in result.error.message
    assert pipeline.store.results["r1"].text == "word " * 1_000


def test_a_dead_letter_too_large_for_llmq_dlq_is_cut_to_fit() -> None:
    send = LimitedSend({DLQ: 5_000})
    outbox = Outbox(FakeStore(), send)
    raw = b"{" + b"x" * 20_000
    error = LlmqError(ErrorCode.INVALID_REQUEST, "not JSON")
    asyncio.run(outbox.dead_letter("llmq.requests", b"k", raw, error))
    [letter] = send.sent
    assert letter.topic == DLQ and raw.startswith(letter.value)
    assert record_size(letter.key, letter.value, list((letter.headers or {}).items())) <= 5_000
    assert letter.headers == {
        **dead_letter("llmq.requests", b"k", raw, error).headers,
        HEADER_ORIGINAL_BYTES: b"20001",
    }
