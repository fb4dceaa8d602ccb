"""Kafka with SASL: a broker of its own (the stack's jars, a SASL_PLAINTEXT listener, mechanism
PLAIN) that every llmq Kafka client reaches through the LLMQ_KAFKA_* settings."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from pydantic import SecretStr

from llmq.client import CONNECT_TIMEOUT_S, Client, tail
from llmq.startup import UNREACHABLE, StartError, reach_kafka
from schemas.catalog import Catalog
from schemas.lanes import Lane
from schemas.names import REQUESTS, TopicSpec, work_topic, work_topics
from schemas.request import InferenceRequest
from schemas.settings import ServiceSettings
from streams.app import build
from streams.settings import StreamSettings
from tests.integration.helpers import collect
from tools.stack import kafka
from tools.stack.ports import free_block
from tools.stack.procs import Proc
from tools.stack.settings import LocalSettings
from tools.topics import ensure_topics
from workers.__main__ import kafka_clients
from workers.settings import WorkerSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

USER = "llmq-app"
PASSWORD = "sasl-pw-4d1c"
REPLIES = "sasl.replies"
STREAMS_OUT = "sasl.streams"
SPEC = Catalog.builtin().models[0]


def _sasl(bootstrap: str, password: str = PASSWORD) -> dict[str, Any]:
    """The LLMQ_KAFKA_* settings of an app that logs in as USER."""
    return {
        "kafka_bootstrap": bootstrap,
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": USER,
        "kafka_sasl_password": SecretStr(password),
    }


@pytest.fixture(scope="module")
def sasl_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A single-node broker with a plaintext listener (for creating topics) and a SASL one
    (yielded) that knows USER; stopped afterwards."""
    base = free_block(3)  # plaintext, controller, SASL
    folder = tmp_path_factory.mktemp("kafka-sasl")
    libs = kafka.fetch_libs(LocalSettings().cache_dir)
    props = kafka.write_config(
        folder / "data", base, base + 1, kafka.SaslListener(base + 2, {USER: PASSWORD})
    )
    kafka.format_storage(libs, props, folder / "data")
    # A small heap: this broker holds a handful of records.
    argv = ["-Xmx384m" if a.startswith("-Xmx") else a for a in kafka.broker_argv(libs, props)]
    broker = Proc("kafka-sasl", argv, folder / "run", stop_timeout_s=20)
    broker.start()
    try:
        # kafka-python leaves the sockets of refused connections unclosed, and their
        # ResourceWarnings surface in whichever test the garbage collector runs: no client
        # connects before the broker listens.
        _wait_listening(base, timeout_s=120)
        names = [REQUESTS, REPLIES, STREAMS_OUT, *work_topics(SPEC.name)]
        ensure_topics(f"127.0.0.1:{base}", [TopicSpec(n, 1) for n in names], timeout_s=120)
        yield f"127.0.0.1:{base + 2}"
    finally:
        broker.stop()


def _wait_listening(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            time.sleep(0.25)
        else:
            return
    raise TimeoutError(f"the SASL test broker did not listen on {port} in {timeout_s:.0f}s")


def _read_back(consumer: KafkaConsumer, found: Callable[[bytes], bool]) -> list[bytes]:
    """What the consumer reads until a record is `found` (or 30 s pass)."""
    records = collect(consumer, done=lambda rs: any(found(r.value) for r in rs), timeout_s=30)
    return [bytes(r.value) for r in records]


def test_the_client_publishes_and_tails_with_the_right_password(sasl_bootstrap: str) -> None:
    settings = ServiceSettings(**_sasl(sasl_bootstrap))
    cid = f"sasl-{uuid.uuid4().hex}"
    requests = tail(sasl_bootstrap, REQUESTS, settings.kafka_security())
    try:
        # listen=True: the Client's reply listener (a tail of REPLIES) logs in too.
        with Client(settings, reply_to=REPLIES, tenant="sasl") as client:
            client.submit("Hello over SASL", correlation_id=cid)
        values = _read_back(requests, lambda v: cid.encode() in v)
    finally:
        requests.close()
    sent = [InferenceRequest.model_validate_json(v) for v in values]
    assert [(r.correlation_id, r.tenant) for r in sent] == [(cid, "sasl")]


@pytest.mark.timeout(CONNECT_TIMEOUT_S * 4, func_only=True)  # a bounded wait, not a hang
# kafka-python (3.0.12) leaves the sockets of refused connections unclosed; collected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("listen", [True, False], ids=["listener", "producer"])
def test_a_wrong_password_fails_with_a_clear_error(sasl_bootstrap: str, listen: bool) -> None:
    settings = ServiceSettings(**_sasl(sasl_bootstrap, password="not-the-password"))
    with (
        pytest.raises(RuntimeError) as caught,
        Client(settings, reply_to=REPLIES, listen=listen) as client,
    ):
        client.submit("never sent")
    gc.collect()
    message = str(caught.value)
    assert f"cannot connect to Kafka at {sasl_bootstrap} (SASL_PLAINTEXT PLAIN as '{USER}')" in (
        message
    )
    assert "LLMQ_KAFKA_SASL_*" in message
    assert "not-the-password" not in message


def test_a_service_start_logs_in_or_says_why_it_cannot(sasl_bootstrap: str) -> None:
    """llmq.startup.reach_kafka, which every service runs before it loads anything."""
    reach_kafka(ServiceSettings(**_sasl(sasl_bootstrap)), "sasl-start")
    wrong = ServiceSettings(**_sasl(sasl_bootstrap, password="not-the-password"))
    with pytest.raises(StartError) as refused:
        reach_kafka(wrong, "sasl-start", wait_s=60)
    message = str(refused.value)
    assert refused.value.code == UNREACHABLE
    assert f"cannot reach Kafka at {sasl_bootstrap} (SASL_PLAINTEXT PLAIN as '{USER}')" in message
    assert "no answer" not in message, "the broker's refusal, not a wait"
    assert "Authentication failed: Invalid username or password" in message, "and its reason"
    assert "not-the-password" not in message


def test_the_worker_kafka_clients_log_in(sasl_bootstrap: str) -> None:
    """The worker's own producer and consumer (workers.__main__.kafka_clients): one record
    produced to its work topic and consumed by its group."""
    settings = WorkerSettings(**_sasl(sasl_bootstrap), model=SPEC.name)
    value = f"work-{uuid.uuid4().hex}".encode()

    async def round_trip() -> bytes:
        producer, consumer = kafka_clients(settings, SPEC)
        await producer.start()
        try:
            await (await producer.send(work_topic(SPEC.name, Lane.STANDARD), value))
            consumer.subscribe(work_topics(SPEC.name))
            await consumer.start()
            try:
                record = await asyncio.wait_for(consumer.getone(), timeout=60)
                return bytes(record.value)
            finally:
                await consumer.stop()
        finally:
            await producer.stop()

    assert asyncio.run(round_trip()) == value


def test_the_stream_processor_app_logs_in(sasl_bootstrap: str, tmp_path: Path) -> None:
    """The faust app as streams.app.build makes it: its producer publishes over SASL."""
    settings = StreamSettings(
        **_sasl(sasl_bootstrap),
        semantic_cache=False,
        data_dir=tmp_path,
        app_id=f"sasl-{uuid.uuid4().hex[:8]}",
    )
    value = f"streams-{uuid.uuid4().hex}".encode()
    readback = tail(sasl_bootstrap, STREAMS_OUT, settings.kafka_security())

    async def publish() -> None:
        producer = build(settings).producer
        await producer.start()
        try:
            await producer.send_and_wait(
                STREAMS_OUT, None, value, partition=None, timestamp=None, headers=None
            )
        finally:
            await producer.stop()

    try:
        asyncio.run(publish())
        assert value in _read_back(readback, lambda v: v == value)
    finally:
        readback.close()
