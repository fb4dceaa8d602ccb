"""A request Kafka will not take for its size, in both clients, against fake producers that
refuse as aiokafka's and kafka-python's do (a broker's refusal breaks an idempotent producer:
aiokafka's on that partition, kafka-python's for every send); tests/integration/
test_topic_limits.py runs the real ones."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError, OutOfOrderSequenceNumber
from kafka.errors import MessageSizeTooLargeError as SyncTooLarge

from llmq import aio, client
from llmq.aio import AsyncClient
from llmq.client import Client
from llmq.record_limits import RECORD_LIMIT, REREAD_S
from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatBody, ChatMessage, InferenceRequest
from schemas.settings import ServiceSettings

pytestmark = pytest.mark.timeout(30)

LOWERED = 10_000


class Broker:
    """llmq.requests' limit, what was written, and every producer made."""

    def __init__(self, limit: int = RECORD_LIMIT) -> None:
        self.limit = limit
        self.written: list[bytes] = []
        self.made: list[Any] = []


class FakeAioProducer:
    """aiokafka's: refuses past max_request_size in send(); once the broker refused one of
    its records, every later one is out of sequence (one partition here)."""

    def __init__(self, broker: Broker, **config: Any) -> None:
        self.broker, self.max_request_size = broker, config["max_request_size"]
        self.broken = self.stopped = False
        broker.made.append(self)

    async def start(self) -> None: ...

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        if len(value) > self.max_request_size:
            raise MessageSizeTooLargeError()
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(self._settle, ack, value)  # in flight together
        return ack

    def _settle(self, ack: asyncio.Future[None], value: bytes) -> None:
        if self.broken:
            ack.set_exception(OutOfOrderSequenceNumber())
        elif len(value) > self.broker.limit:
            self.broken = True
            ack.set_exception(MessageSizeTooLargeError())
        else:
            self.broker.written.append(value)
            ack.set_result(None)


class FakeSyncProducer:
    """kafka-python's: refuses past max_request_size in send(); once the broker refused one
    of its records, every later send fails with that error."""

    def __init__(self, broker: Broker, **config: Any) -> None:
        self.broker, self.max_request_size = broker, config["max_request_size"]
        self.broken = self.closed = False
        broker.made.append(self)

    def send(self, topic: str, key: bytes, value: bytes) -> FakeSyncProducer:
        if len(value) > self.max_request_size:
            raise SyncTooLarge()
        if self.broken or len(value) > self.broker.limit:
            self.broken = True
            self._error: Exception | None = SyncTooLarge()
        else:
            self.broker.written.append(value)
            self._error = None
        return self

    def get(self, timeout: float) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None: ...

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def _request(chars: int) -> InferenceRequest:
    body = ChatBody(messages=[ChatMessage(role="user", content="y" * chars)])
    return InferenceRequest(correlation_id=f"r{chars}", body=body)


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    broker = Broker()

    async def read(settings: ServiceSettings, client_id: str, topic: str) -> int:
        return min(broker.limit, RECORD_LIMIT)

    monkeypatch.setattr(aio, "AIOKafkaProducer", lambda **c: FakeAioProducer(broker, **c))
    monkeypatch.setattr(aio, "read_record_limit", read)
    monkeypatch.setattr(client, "connect", lambda kind, *a, **c: FakeSyncProducer(broker, **c))
    monkeypatch.setattr(client, "read_record_limit_blocking", lambda *a: broker.limit)
    return broker


def _producing(app: AsyncClient, broker: Broker) -> None:
    """The producer as start() makes it, without the reply consumer start() also starts."""
    app._limit = min(broker.limit, RECORD_LIMIT)
    app._producer = app._new_producer(app._limit)


def test_past_the_limit_read_at_the_start_a_request_is_refused_unsent(broker: Broker) -> None:
    broker.limit = LOWERED

    async def scenario() -> LlmqError:
        app = AsyncClient(ServiceSettings())
        _producing(app, broker)
        with pytest.raises(LlmqError) as refused:
            await app.submit_request(_request(12_000))
        await app.submit_request(_request(100))
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.code is ErrorCode.PROMPT_TOO_LARGE
    said = r"the record is 12\d{3} bytes; Kafka refuses it on llmq.requests \(it takes at most "
    assert re.fullmatch(said + rf"{LOWERED}: max.message.bytes\)", refused.message)
    [producer] = broker.made  # never refused by the broker: the one producer goes on
    assert producer.max_request_size == LOWERED
    assert len(broker.written) == 1


def test_a_limit_lowered_under_the_async_client_costs_one_fresh_producer(broker: Broker) -> None:
    """The record past the new limit is refused; those in flight behind it on the broken
    partition go once more through the fresh producer, as do the next."""

    async def scenario() -> list[BaseException | None]:
        app = AsyncClient(ServiceSettings())
        _producing(app, broker)
        broker.limit = LOWERED
        sent = await asyncio.gather(
            *(app.submit_request(_request(n)) for n in (12_000, 100, 200)),
            return_exceptions=True,
        )
        await app.submit_request(_request(300))
        return [None if isinstance(s, str) else s for s in sent]

    big, *behind = asyncio.run(scenario())
    assert isinstance(big, LlmqError) and big.code is ErrorCode.PROMPT_TOO_LARGE
    assert behind == [None, None]
    first, fresh = broker.made
    assert first.stopped and not fresh.stopped
    assert fresh.max_request_size == LOWERED
    written = [InferenceRequest.model_validate_json(v).correlation_id for v in broker.written]
    assert sorted(written) == ["r100", "r200", "r300"]


def test_a_limit_lowered_under_the_sync_client_costs_one_fresh_producer(broker: Broker) -> None:
    with Client(ServiceSettings(), listen=False) as app:
        app.submit_request(_request(100))
        broker.limit = LOWERED
        with pytest.raises(LlmqError) as refused:
            app.submit_request(_request(12_000))
        app.submit_request(_request(200))
        first, fresh = broker.made
        assert first.closed and fresh.max_request_size == LOWERED
        fresh.broken = True  # as if another thread's record broke it: this one goes again
        app.submit_request(_request(300))
        app.submit_request(_request(400))
    assert refused.value.code is ErrorCode.PROMPT_TOO_LARGE
    assert len(broker.made) == 3
    assert len(broker.written) == 4


def test_a_record_the_broker_refuses_twice_is_too_large_whatever_the_limit_read(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the brokers will not say the limit, the last known stands; a record the
    broker refused twice is too large all the same."""
    monkeypatch.setattr(client, "read_record_limit_blocking", lambda *a: None)
    with Client(ServiceSettings(), listen=False) as app:
        app.submit_request(_request(100))
        broker.limit = LOWERED
        with pytest.raises(LlmqError) as refused:
            app.submit_request(_request(12_000))
        app.submit_request(_request(200))
    assert "Kafka refuses it on llmq.requests (past what it takes" in refused.value.message
    assert [p.max_request_size for p in broker.made] == [RECORD_LIMIT] * 3
    assert len(broker.written) == 2


def test_a_limit_raised_again_takes_the_records_it_refused(broker: Broker) -> None:
    """A refused record has the limit read again, at most every REREAD_S: raised since, a
    fresh producer under it sends the record."""
    broker.limit = LOWERED

    async def scenario() -> None:
        app = AsyncClient(ServiceSettings())
        _producing(app, broker)
        broker.limit = RECORD_LIMIT
        await app.submit_request(_request(12_000))

    asyncio.run(scenario())
    broker.limit = LOWERED
    with Client(ServiceSettings(), listen=False) as app:
        app.submit_request(_request(100))
        broker.limit = RECORD_LIMIT
        with pytest.raises(LlmqError):  # the limit was read less than REREAD_S ago
            app.submit_request(_request(12_000))
        app._read_at -= REREAD_S
        app.submit_request(_request(13_000))
    limits = [p.max_request_size for p in broker.made]
    assert limits == [LOWERED, RECORD_LIMIT, LOWERED, RECORD_LIMIT]
    assert [len(v) > LOWERED for v in broker.written] == [True, False, True]
