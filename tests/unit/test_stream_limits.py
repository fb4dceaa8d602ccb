"""Topics the stream processor writes that take fewer bytes a record than it sends: the
limits it learns from the broker's refusals (streams/limits.py), and what each stage makes
of a record refused (the request's error reply, an answer replaced by why, a dead letter
cut to fit), never a failure of the stream processor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from prometheus_client import REGISTRY

from llmq.record_limits import RECORD_LIMIT, REREAD_S, record_size
from schemas.dlq import dead_letter
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.names import DLQ, HEADER_ORIGINAL_BYTES, REQUESTS_KEYED, work_topic, work_topics
from schemas.request import RecordRefusedError
from schemas.work import Completion, WorkItem
from streams.coalesce import Coalescer
from streams.limits import TopicLimits
from streams.outbox import Outbox
from tests.unit.stages import (
    TIERED,
    FakeSend,
    FakeStore,
    Pipeline,
    admitted,
    completion,
    raw_request,
    result_of,
    tiered_work,
)

TOPIC = "llmq.some"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Broker:
    """One topic's broker as faust's producer meets it: it weighs a batch whole, so while
    `crowded` a record not sent alone is refused with those beside it; it says its limit,
    or (`says` False) will not."""

    def __init__(self, limit: int, clock: Clock, crowded: bool = False, says: bool = True) -> None:
        self.limit = limit
        self.clock = clock
        self.crowded = crowded
        self.says = says
        self.reads = 0
        self.tries = 0
        self.sent: list[tuple[int, bool]] = []

    async def read(self, topic: str) -> int | None:
        assert topic == TOPIC
        self.reads += 1
        await asyncio.sleep(0)
        self.clock.now += 0.01  # a read takes time: refusals meanwhile share it
        return self.limit if self.says else None

    async def send(self, limits: TopicLimits, size: int) -> None:
        """One record of `size` bytes as a producer reckons it, through `limits`."""
        value = b"x" * size
        value = value[: size - (record_size(None, value) - size)]
        assert record_size(None, value) == size

        async def once(alone: bool) -> None:
            self.tries += 1
            self.clock.now += 0.001  # a send takes time too
            await asyncio.sleep(0)
            if size > self.limit or (self.crowded and not alone):
                raise MessageSizeTooLargeError()
            self.sent.append((size, alone))

        await limits.send(TOPIC, None, value, {}, once)


async def _outcomes(limits: TopicLimits, broker: Broker, *sizes: int) -> list[str]:
    """Each record sent at once: "sent" or, refused, the limit its refusal names."""
    done = await asyncio.gather(*(broker.send(limits, n) for n in sizes), return_exceptions=True)
    return [
        f"refused at {out.limit}" if isinstance(out, RecordRefusedError) else "sent" for out in done
    ]


def test_a_topic_never_refused_is_not_read_and_its_records_are_batched() -> None:
    broker = Broker(RECORD_LIMIT, Clock())
    limits = TopicLimits(broker.read, broker.clock)
    assert asyncio.run(_outcomes(limits, broker, 50_000)) == ["sent"]
    assert broker.reads == 0 and broker.sent == [(50_000, False)]


def test_a_refused_batch_is_sent_again_alone_and_only_a_record_past_the_limit_refused() -> None:
    """The broker refuses the batch whole; one read of the limit serves the three records:
    the two within it go again, each alone; the one past it is refused, naming the limit.
    From then on the topic's records go alone, and one past the limit is refused unsent."""
    broker = Broker(10_000, Clock(), crowded=True)
    limits = TopicLimits(broker.read, broker.clock)

    async def run() -> tuple[list[str], list[str]]:
        together = await _outcomes(limits, broker, 500, 12_000, 9_000)
        tries = broker.tries
        later = await _outcomes(limits, broker, 12_000, 600)
        assert broker.tries == tries + 1  # the 12,000 unsent; the 600 at once, alone
        return together, later

    together, later = asyncio.run(run())
    assert together == ["sent", "refused at 10000", "sent"]
    assert later == ["refused at 10000", "sent"]
    assert sorted(broker.sent) == [(500, True), (600, True), (9_000, True)]
    assert broker.reads == 1


def test_a_limit_raised_again_takes_the_record_and_the_topic_is_forgotten() -> None:
    broker = Broker(10_000, Clock())
    limits = TopicLimits(broker.read, broker.clock)

    async def run() -> list[str]:
        outcomes = await _outcomes(limits, broker, 12_000)
        broker.limit = RECORD_LIMIT
        outcomes += await _outcomes(limits, broker, 12_000)  # the limit read stands
        broker.clock.now += REREAD_S
        outcomes += await _outcomes(limits, broker, 12_000, 900_000)
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes == ["refused at 10000", "refused at 10000", "sent", "sent"]
    assert broker.reads == 2  # at the refusal, and once REREAD_S had passed
    assert broker.sent == [(12_000, False), (900_000, False)]  # batched again


def test_records_go_alone_while_the_limit_is_under_a_batch_and_batched_once_raised() -> None:
    broker = Broker(10_000, Clock())
    limits = TopicLimits(broker.read, broker.clock)

    async def run() -> None:
        await _outcomes(limits, broker, 12_000)
        await _outcomes(limits, broker, 600)
        broker.limit = RECORD_LIMIT
        broker.clock.now += REREAD_S
        await _outcomes(limits, broker, 600)

    asyncio.run(run())
    assert broker.sent == [(600, True), (600, False)]
    assert broker.reads == 2


def test_where_the_brokers_will_not_say_a_record_refused_alone_too_is_refused() -> None:
    """Taken to be within the last known limit (RECORD_LIMIT at first), it goes once more,
    alone; refused again, it is refused for good. The records refused together share one
    read each time, said or not."""
    broker = Broker(10_000, Clock(), says=False)
    limits = TopicLimits(broker.read, broker.clock)
    outcomes = asyncio.run(_outcomes(limits, broker, 12_000, 13_000))
    assert outcomes == ["refused at None", "refused at None"]
    assert broker.tries == 4 and broker.reads == 2


class LimitedSend(FakeSend):
    """Refuses a record past its topic's limit as FaustSend does, naming the limit, or not
    where the brokers will not say it (`said` False)."""

    def __init__(self, limits: dict[str, int], said: bool = True) -> None:
        super().__init__()
        self.limits = limits
        self.said = said

    def before(
        self, topic: str, key: bytes | None, value: bytes, headers: Mapping[str, bytes] | None
    ) -> None:
        size = record_size(key, value, list((headers or {}).items()))
        limit = self.limits.get(topic, RECORD_LIMIT)
        if size > limit:
            raise RecordRefusedError(topic, size, limit if self.said else None)


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
    labels = {"code": ErrorCode.ANSWER_TOO_LARGE.value}
    before = REGISTRY.get_sample_value("llmq_streams_rejections_total", labels) or 0
    pipeline.on_completion(completion(work, "word " * 1_000))
    assert REGISTRY.get_sample_value("llmq_streams_rejections_total", labels) == before + 1
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


def test_a_dead_letter_refused_where_the_limit_is_unknown_keeps_its_reason_alone() -> None:
    send = LimitedSend({DLQ: 5_000}, said=False)
    outbox = Outbox(FakeStore(), send)
    error = LlmqError(ErrorCode.INVALID_REQUEST, "not JSON")
    asyncio.run(outbox.dead_letter("llmq.requests", b"k", b"{" + b"x" * 20_000, error))
    [letter] = send.sent
    assert letter.value == b""
    assert letter.headers is not None and letter.headers[HEADER_ORIGINAL_BYTES] == b"20001"


def test_an_answer_whose_reason_too_is_refused_is_not_sent_and_nothing_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    send = LimitedSend({"app.replies": 200})
    pipeline = Pipeline(send=send)
    pipeline.on_completion(completion(admitted(raw_request("r3")), "Hello!"))
    assert [s.topic for s in send.sent] == []
    assert "cannot tell r3 why: the record is " in caplog.text


def _copies(pipeline: Pipeline, n: int) -> WorkItem:
    """n identical deterministic requests with a long question (one generation for all)."""
    for i in range(n):
        messages = [{"role": "user", "content": LONG}]
        pipeline.on_request(None, raw_request(f"copy-{i}", temperature=0, messages=messages))
    [sent] = pipeline.send.sent
    pipeline.send.sent.clear()
    return WorkItem.model_validate_json(sent.value)


def _lower_work_topics(send: LimitedSend) -> None:
    send.limits.update(dict.fromkeys(work_topics("smollm2-135m"), 10_000))


def test_copies_kept_from_a_stale_leader_share_the_refusal_of_the_new_one() -> None:
    send = LimitedSend({})
    pipeline = Pipeline(send=send)
    messages = [{"role": "user", "content": LONG}]
    old = admitted(raw_request("old", temperature=0, messages=messages))
    stale = Coalescer(pipeline.table, stale_after_s=600)
    long_ago = time.time() - 1_000
    stale.join(old.request, old.fingerprint, now=long_ago)
    kept = old.request.model_copy(update={"correlation_id": "kept"})
    stale.join(kept, old.fingerprint, now=long_ago + 1)
    _lower_work_topics(send)
    pipeline.on_request(None, raw_request("new", temperature=0, messages=messages))
    replies = [result_of(s) for s in send.sent if s.topic != DLQ]
    assert sorted((r.correlation_id, r.error and r.error.code) for r in replies) == [
        ("kept", ErrorCode.PROMPT_TOO_LARGE),
        ("new", ErrorCode.PROMPT_TOO_LARGE),
    ]
    assert pipeline.table == {}


def test_a_retry_past_its_topics_limit_answers_the_request_and_its_copies_with_why() -> None:
    send = LimitedSend({})
    pipeline = Pipeline(send=send)
    work = _copies(pipeline, 3)
    _lower_work_topics(send)
    pipeline.on_completion(completion(work, None))  # engine_error: retried, refused
    results = [result_of(s) for s in send.sent]
    assert [r.correlation_id for r in results] == ["copy-0", "copy-1", "copy-2"]
    assert all(r.error and r.error.code == ErrorCode.PROMPT_TOO_LARGE.value for r in results)
    assert pipeline.table == {}


def test_a_promoted_copy_past_its_topics_limit_is_answered_with_why_as_are_the_rest() -> None:
    """Its leader's client left, so the first copy would lead a new generation: refused, it
    and the other copy get why, and the coalescing entry goes."""
    send = LimitedSend({})
    pipeline = Pipeline(send=send)
    work = _copies(pipeline, 3)
    _lower_work_topics(send)
    pipeline.on_completion(completion(work, None, ErrorCode.CANCELLED))
    codes = sorted((r.correlation_id, r.error and r.error.code) for r in map(result_of, send.sent))
    assert codes == [
        ("copy-0", ErrorCode.CANCELLED),
        ("copy-1", ErrorCode.PROMPT_TOO_LARGE),
        ("copy-2", ErrorCode.PROMPT_TOO_LARGE),
    ]
    assert pipeline.table == {}


def test_an_unsure_answer_whose_escalation_is_refused_stands() -> None:
    send = LimitedSend({})
    pipeline = Pipeline(catalog=TIERED, send=send)
    work = tiered_work(pipeline, "auto")
    send.limits.update(dict.fromkeys(work_topics("big"), 500))
    unsure = Completion.model_validate_json(completion(work, "Maybe?"))
    pipeline.on_completion(
        unsure.model_copy(update={"mean_logprob": -2.5}).model_dump_json().encode()
    )
    [reply] = send.sent
    assert (result_of(reply).correlation_id, result_of(reply).text) == ("t-1", "Maybe?")
    assert pipeline.table == {}
    assert pipeline.store.answers == {}, "a later copy, its answer perhaps shorter, may escalate"
