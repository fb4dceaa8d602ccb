"""Kafka topics that take fewer bytes a record than llmq sends (max.message.bytes lowered):
whatever is too large is refused with an error that says so, and nothing stops or wedges:
not a worker, not an app's client, not the front door. Runs after the pipeline tests (file
order): it restarts the stack's worker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import openai
import pytest
from aiokafka.partitioner import murmur2
from kafka import KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from openai import OpenAI

from llmq.aio import AsyncClient
from llmq.client import Client, tail
from llmq.record_limits import RECORD_LIMIT, record_size
from llmq.startup import reach_kafka
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.names import (
    COMPLETIONS,
    DLQ,
    HEADER_ORIGINAL_BYTES,
    REQUESTS,
    REQUESTS_KEYED,
    work_topic,
)
from schemas.request import CacheMode
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings
from tests.integration.helpers import collect, header
from tools.stack.procs import Proc
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

LONG_PROMPT = "Summarise: " + "the quick brown fox jumps over the lazy dog. " * 270
"""Past a 10,000-byte limit as a record, within what admission takes for the served model."""


@contextmanager
def _lowered(bootstrap: str, topic: str, limit: int = 10_000) -> Iterator[None]:
    """`topic` takes at most `limit` bytes a record while the block runs."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    lowered = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(limit)})
    try:
        admin.alter_configs([lowered])
        yield
    finally:
        admin.reset_configs([lowered])
        admin.close()


def test_a_request_kafka_refuses_is_named_and_the_client_goes_on(
    service_settings: ServiceSettings, client: Client
) -> None:
    """kafka-python's producer fails every send after a broker refused one: the client
    sends through a fresh one, so only the request too large is refused."""
    assert 10_000 < len(LONG_PROMPT) < 16_384
    with _lowered(service_settings.kafka_bootstrap, REQUESTS):
        before = client.submit(f"Say yes. ({uuid.uuid4().hex[:8]})", max_tokens=4)
        with pytest.raises(LlmqError) as refused:
            client.submit(LONG_PROMPT, max_tokens=4, cache=CacheMode.OFF)
        after = client.submit(f"Say no. ({uuid.uuid4().hex[:8]})", max_tokens=4)
        results = [client.result(cid, timeout=300) for cid in (before, after)]
    assert refused.value.code is ErrorCode.PROMPT_TOO_LARGE
    assert f"Kafka refuses it on {REQUESTS} (it takes at most 10000: max" in refused.value.message
    assert [r.status for r in results] == ["ok", "ok"]


def _same_partition(bootstrap: str, count: int) -> list[str]:
    """`count` new correlation ids that aiokafka's partitioner puts on one partition of
    llmq.requests."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    partitions = len(consumer.partitions_for_topic(REQUESTS) or ())
    consumer.close()
    ids: list[str] = []
    while len(ids) < count:
        cid = uuid.uuid4().hex
        if (murmur2(cid.encode()) & 0x7FFFFFFF) % partitions == 0:
            ids.append(cid)
    return ids


def test_a_request_kafka_refuses_leaves_its_partition_to_the_async_client(
    service_settings: ServiceSettings,
) -> None:
    """aiokafka's producer cannot write a partition again after a broker refused a record
    there (its sequence is broken): the next request on that partition goes through a
    fresh producer."""

    async def scenario() -> tuple[LlmqError, list[str]]:
        before, big, after = _same_partition(service_settings.kafka_bootstrap, 3)
        async with AsyncClient(service_settings) as app:
            await app.submit("Say yes.", max_tokens=4, correlation_id=before)
            with pytest.raises(LlmqError) as refused:
                await app.submit(LONG_PROMPT, max_tokens=4, correlation_id=big)
            await app.submit("Say no.", max_tokens=4, correlation_id=after)
            results = [await app.result(cid, 300) for cid in (before, after)]
        return refused.value, [r.status for r in results]

    with _lowered(service_settings.kafka_bootstrap, REQUESTS):
        refused, statuses = asyncio.run(scenario())
    assert refused.code is ErrorCode.PROMPT_TOO_LARGE
    assert statuses == ["ok", "ok"]


def test_the_front_door_answers_a_request_kafka_refuses_with_400_and_goes_on(
    service_settings: ServiceSettings, sdk: OpenAI
) -> None:
    def ask(content: str) -> str | None:
        answer = sdk.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": content}],
            max_tokens=4,
            extra_body={"cache": "off"},
        )
        return answer.choices[0].finish_reason

    with _lowered(service_settings.kafka_bootstrap, REQUESTS):
        with pytest.raises(openai.BadRequestError) as refused:
            ask(LONG_PROMPT)
        finished = [ask(f"Say yes. ({n})") for n in range(4)]
    assert refused.value.code == "context_length_exceeded"
    assert "max.message.bytes" in refused.value.message
    assert all(reason in ("stop", "length") for reason in finished)


def test_a_request_too_large_for_the_stream_processors_topics_is_refused_and_it_goes_on(
    service_settings: ServiceSettings,
) -> None:
    """The stream processor re-keys a request (llmq.requests.keyed) and hands it to the
    engines (a work topic): one too large for either gets a final prompt_too_large naming
    the topic, its dead letter is cut to what llmq.dlq takes, and the requests around it
    are answered. A client of its own: the session's may hold llmq.requests' limit as the
    tests above lowered it (for REREAD_S)."""
    broker = service_settings.kafka_bootstrap
    dlq = tail(broker, DLQ)
    refused: dict[str, InferenceResult] = {}
    with Client(service_settings) as client, _lowered(broker, DLQ, 8_000):
        # The work topic first: a limit read stands for REREAD_S after it is raised again.
        for topic in (work_topic("smollm2-135m", Lane.STANDARD), REQUESTS_KEYED):
            with _lowered(broker, topic):
                ids = [
                    client.submit(
                        f"{text} ({uuid.uuid4().hex[:8]})", max_tokens=4, cache=CacheMode.OFF
                    )
                    for text in ("Say yes.", LONG_PROMPT, "Say no.")
                ]
                results = [client.result(cid, timeout=300) for cid in ids]
            assert [r.status for r in results] == ["ok", "error", "ok"]
            refused[topic] = results[1]
        wanted = [str(r.correlation_id).encode() for r in refused.values()]
        letters = collect(dlq, lambda rs: all(any(w in r.value for r in rs) for w in wanted), 60)
    dlq.close()
    for topic, result in refused.items():
        assert result.error is not None and result.error.code is ErrorCode.PROMPT_TOO_LARGE
        assert not result.error.retriable
        assert f"Kafka refuses it on {topic} (it takes at most 10000" in result.error.message
        [letter] = [r for r in letters if str(result.correlation_id).encode() in r.value]
        assert len(letter.value) < 8_000 < int(header(letter, HEADER_ORIGINAL_BYTES) or 0)


def test_answers_that_fit_a_low_reply_topic_alone_reach_it_in_a_burst(
    service_settings: ServiceSettings, reply_topic: str
) -> None:
    """A reply topic taking 1,500 bytes a record: each answer fits alone, two do not, and
    the broker weighs a batch whole. Forty cached answers at once on its one partition are
    batched and refused together; each is sent again alone, and every one arrives."""

    async def scenario() -> list[InferenceResult]:
        async with AsyncClient(service_settings, reply_to=reply_topic) as app:

            async def ask(n: int) -> InferenceResult:
                cid = await app.submit(f"Say {n}. ({tag})", max_tokens=2, temperature=0)
                return await app.result(cid, 300)

            results = await asyncio.gather(*(ask(n) for n in range(40)))  # generated
            return results + await asyncio.gather(*(ask(n) for n in range(40)))  # cached

    tag = uuid.uuid4().hex[:8]
    with _lowered(service_settings.kafka_bootstrap, reply_topic, 1_500):
        results = asyncio.run(scenario())
    assert [r.status for r in results] == ["ok"] * 80
    sizes = [
        record_size(str(r.correlation_id).encode(), r.model_dump_json().encode()) for r in results
    ]
    assert all(750 < size <= 1_500 for size in sizes), "each fits alone, two do not"


def test_an_answer_its_topic_no_longer_takes_stops_the_worker_then_is_refused(
    stack: LocalStack, client: Client
) -> None:
    """llmq.completions lowered to 10,000 bytes under a running worker: Kafka refuses the
    answer (200 tokens with 20 alternatives each: at least 117,000 bytes), and a producer the
    broker refused cannot write that partition again, so the worker stops, saying why.
    Started again, it reads the new limit and answers answer_too_large itself; a request
    whose prompt alone passes the limit is answered so too, not generated, without its
    prompt (any outcome carrying it would stop the worker at every start)."""
    worker = next(c.proc for c in stack.components() if c.proc.name == "worker-smollm2-135m")
    try:
        with _lowered(stack.settings.kafka_bootstrap, COMPLETIONS):
            result, too_large = _refused_then_answered(stack, client, worker)
    finally:
        worker.stop()  # to start again under the topic's own limit
        stack.up(say=lambda _: None)
    assert result.error is not None and result.error.code is ErrorCode.ANSWER_TOO_LARGE
    assert f"more than Kafka takes on {COMPLETIONS}" in result.error.message
    assert too_large.error is not None and too_large.error.code is ErrorCode.ANSWER_TOO_LARGE
    assert "it was not generated; send a shorter prompt" in too_large.error.message


def _refused_then_answered(
    stack: LocalStack, client: Client, worker: Proc
) -> tuple[InferenceResult, InferenceResult]:
    """An answer the broker refuses stops the worker; started again, it answers that request
    and one whose prompt alone is too large."""
    cid = client.submit(
        f"Count to ten. ({uuid.uuid4().hex[:8]})",
        max_tokens=200,
        logprobs=True,
        top_logprobs=20,
        ignore_eos=True,
        cache=CacheMode.OFF,
    )
    deadline = time.monotonic() + 240
    while worker.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker.pid() is None, "the worker stopped by itself"
    run = worker.log_file.read_text().split(f"starting {worker.name}")[-1]
    assert "the worker stopped: Kafka refused a " in run
    assert f"record on {COMPLETIONS}: its max.message.bytes is lower" in run
    stack.up(say=lambda _: None)
    result = client.result(cid, timeout=300)
    large = client.submit(LONG_PROMPT, max_tokens=8, cache=CacheMode.OFF)
    too_large = client.result(large, timeout=300)
    assert worker.pid() is not None, "the worker served it and goes on"
    return result, too_large


def test_a_topics_record_limit_is_read_and_a_missing_topic_gets_the_default(
    service_settings: ServiceSettings, caplog: pytest.LogCaptureFixture
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=service_settings.kafka_bootstrap)
    small, missing = (f"llmq.test.{kind}.{uuid.uuid4().hex[:8]}" for kind in ("small", "none"))
    admin.create_topics([NewTopic(small, 1, 1, topic_configs={"max.message.bytes": "100000"})])

    def limit(topic: str) -> int:
        return reach_kafka(service_settings, "test", limits_of=[topic])[topic]

    try:
        assert limit(small) == 100_000
        assert limit(COMPLETIONS) == RECORD_LIMIT  # the broker's 1,048,588 is past the producer's
        assert limit(missing) == RECORD_LIMIT
        assert f"cannot read {missing}'s max.message.bytes" in caplog.text
    finally:
        admin.delete_topics([small])
        admin.close()
