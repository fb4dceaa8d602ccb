"""Both clients after a wait that ended without a result, and what a caller is told: a send
the producer gave up names its request and is never sent after; a result() that timed out
keeps its waiter for the reply still to come; the tenant a request was submitted as is known
without a listener; the CLI's and the example's answers to a refusal. Kafka and Redis are
fakes here."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.producer.record_accumulator import RecordAccumulator

from llmq import aio, client
from llmq.aio import AsyncClient
from llmq.cli import main
from llmq.client import Client
from llmq.redis_client import bounded_client
from llmq.streaming import Delta
from schemas.errors import ErrorCode, LlmqError
from schemas.request import RecordRefusedError
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings
from streams.replies import from_error

pytestmark = pytest.mark.timeout(30)

NO_REDIS = ServiceSettings(redis_url="redis://127.0.0.1:1/0")
"""Nothing listens there: the result store is away, so only replies answer."""
EXAMPLE = Path(__file__).parents[2] / "examples" / "ask.py"


def _result(correlation_id: str, tenant: str = "default") -> InferenceResult:
    answer = {"role": "assistant", "content": "Paris"}
    response = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return InferenceResult.model_validate(
        {"correlation_id": correlation_id, "tenant": tenant, "status": "ok", "response": response}
    )


def _reply(result: InferenceResult) -> bytes:
    return result.model_dump_json().encode()


class ExpiringProducer:
    """kafka-python's producer whose record is never acknowledged: the future's get() raises
    as the producer's expiry of the batch does. Keeps its config and the wait asked for."""

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.waited: float | None = None

    def send(self, topic: str, key: bytes, value: bytes) -> ExpiringProducer:
        return self

    def get(self, timeout: float) -> None:
        self.waited = timeout
        raise KafkaTimeoutError("Expiring 1 record(s) for llmq.requests-0")

    def flush(self) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


def test_a_send_waits_until_the_producer_gave_the_record_up_and_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A send that stopped waiting before the producer gave up left the record queued: it
    could be written after submit() raised, and the caller's retry made a second request."""
    made: list[ExpiringProducer] = []

    def connect(kind: type, *args: Any, **config: Any) -> ExpiringProducer:
        made.append(ExpiringProducer(**config))
        return made[-1]

    monkeypatch.setattr(client, "connect", connect)
    monkeypatch.setattr(client, "read_record_limit_blocking", lambda *a: None)
    with Client(NO_REDIS, listen=False) as app, pytest.raises(KafkaTimeoutError) as raised:
        app.submit("hi", correlation_id="order-42")
    [producer] = made
    assert producer.waited is not None
    assert producer.config["delivery_timeout_ms"] / 1000 <= producer.waited
    timeouts = ("delivery_timeout_ms", "linger_ms", "request_timeout_ms")
    RecordAccumulator(**{name: producer.config[name] for name in timeouts})  # kafka-python's check
    assert "correlation_id='order-42'" in str(raised.value)


def test_an_async_result_that_timed_out_still_gets_the_reply_that_comes_after() -> None:
    async def run() -> str:
        app = AsyncClient(NO_REDIS)
        app._send = _sent  # type: ignore[method-assign]
        correlation_id = await app.submit("hi")
        with pytest.raises(TimeoutError):
            await app.result(correlation_id, wait_s=0)
        app._on_result(_reply(_result(correlation_id)))
        return (await app.result(correlation_id, wait_s=20)).status

    assert asyncio.run(run()) == "ok"


def test_a_cancelled_result_takes_its_waiter_with_it() -> None:
    """A front door cancels result() when its client leaves: nobody asks again, so the reply
    to come must not be kept (a busy door would hold thousands)."""

    async def run() -> None:
        app = AsyncClient(NO_REDIS)
        app._send = _sent  # type: ignore[method-assign]
        correlation_id = await app.submit("hi")
        waiting = asyncio.create_task(app.result(correlation_id, wait_s=20))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not app._pending

    asyncio.run(run())


def test_a_cancelled_result_of_an_id_not_submitted_here_is_cancelled() -> None:
    """It polls the result store, with no waiter of its own to take along."""

    async def run() -> None:
        app = AsyncClient(NO_REDIS)
        waiting = asyncio.create_task(app.result("someone-elses", wait_s=20))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(run())


def test_a_follow_beside_a_result_that_timed_out_gets_the_reply() -> None:
    async def run() -> str | None:
        app = AsyncClient(NO_REDIS)
        app._send = _sent  # type: ignore[method-assign]
        correlation_id = await app.submit("hi", stream=True)
        following = asyncio.create_task(_finish(app.follow(correlation_id, wait_s=20)))
        await asyncio.sleep(0)  # the follow waits on the request's waiter
        with pytest.raises(TimeoutError):
            await app.result(correlation_id, wait_s=0)
        app._on_result(_reply(_result(correlation_id)))
        finished = await following
        assert not app._pending
        return finished

    assert asyncio.run(run()) == "stop"


def test_waiters_left_behind_are_bounded_in_both_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio, "MAX_WAITING", 2)
    monkeypatch.setattr(client, "MAX_WAITING", 2)

    async def submitted() -> list[tuple[str, str]]:
        app = AsyncClient(NO_REDIS)
        app._send = _sent  # type: ignore[method-assign]
        for n in range(3):
            await app.submit("hi", correlation_id=f"c{n}")
        return list(app._pending)

    with Client(NO_REDIS, listen=False) as app:
        app._send = lambda *_: None  # type: ignore[method-assign]
        for n in range(3):
            app.submit("hi", correlation_id=f"c{n}")
        kept = list(app._pending)
    assert kept == asyncio.run(submitted()) == [("default", "c1"), ("default", "c2")]


def test_past_the_bound_an_awaited_waiter_stays_and_gets_its_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A front door's client awaits its answer while others submit past the bound: the
    oldest waiter nobody awaits goes instead, and the awaited one's reply is not dropped."""
    monkeypatch.setattr(aio, "MAX_WAITING", 2)

    async def run() -> tuple[InferenceResult, list[tuple[str, str]]]:
        app = AsyncClient(NO_REDIS)
        app._send = _sent  # type: ignore[method-assign]
        first = await app.submit("hi", correlation_id="c0")
        waiting = asyncio.create_task(app.result(first, wait_s=5))
        await asyncio.sleep(0)  # the result() awaits c0's waiter
        for n in range(1, 4):
            await app.submit("hi", correlation_id=f"c{n}")
        kept = list(app._pending)
        app._on_result(_reply(_result(first)))
        return await waiting, kept

    answer, kept = asyncio.run(run())
    assert answer.correlation_id == "c0"
    assert kept == [("default", "c0"), ("default", "c3")]


def test_without_a_listener_a_result_is_read_under_the_tenant_it_was_submitted_as() -> None:
    with Client(NO_REDIS, listen=False, tenant="a") as app:
        app._send = lambda *_: None  # type: ignore[method-assign]
        app._stored = _store_of("b")  # type: ignore[method-assign]
        correlation_id = app.submit("hi", tenant="b")
        assert app.result(correlation_id, timeout=0).tenant == "b"
        assert app.ask("hi", tenant="b", timeout=0).tenant == "b"


def test_a_timeout_says_the_wait_as_given() -> None:
    async def waited() -> str:
        app = AsyncClient(NO_REDIS)
        app._send = _sent  # type: ignore[method-assign]
        with pytest.raises(TimeoutError) as raised:
            await app.result(await app.submit("hi"), wait_s=0.25)
        return str(raised.value)

    with Client(NO_REDIS, listen=False) as app, pytest.raises(TimeoutError) as raised:
        app._stored = lambda *_: None  # type: ignore[method-assign]
        app.result("c1", timeout=0.25)
    assert str(raised.value).endswith("within 0.25s")
    assert asyncio.run(waited()).endswith("within 0.25s")


def test_a_request_the_client_refuses_is_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(self: Client, topic: str, key: bytes, value: bytes) -> None:
        raise RecordRefusedError(topic, len(value) + 70_000, 65_536)

    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing is reached
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(Client, "_send", refuse)
    assert main(["submit", "hello"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("llmq: prompt_too_large: the record is ")


def test_the_ask_example_prints_a_refusal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An admission refusal has no timings (streams.refusals builds it so)."""
    refusal = LlmqError(ErrorCode.RATE_LIMITED, "over 60 requests a minute", 3.0)

    class Refused:
        def __enter__(self) -> Refused:
            return self

        def __exit__(self, *exc: object) -> None: ...

        def submit(self, prompt: str, **kwargs: Any) -> str:
            return prompt

        def result(self, correlation_id: str, timeout: float) -> InferenceResult:
            return from_error(refusal, correlation_id, "default")

    spec = importlib.util.spec_from_file_location("ask_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(example, "Client", Refused)
    example.main()
    assert capsys.readouterr().out.count("error: over 60 requests a minute") == 3


async def _sent(topic: str, key: str, value: bytes) -> None: ...


async def _finish(pieces: AsyncIterator[Delta]) -> str | None:
    """The finish_reason of the last piece."""
    return [piece async for piece in pieces][-1].finish_reason


def _store_of(tenant: str) -> Any:
    """A result store holding a result for every id, under `tenant` only."""
    return lambda of, correlation_id: _result(correlation_id, of) if of == tenant else None


def test_a_stored_value_that_is_no_result_is_the_stores_failure_in_asyncio_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The asyncio client raised pydantic's ValidationError, as if the caller's input were
    wrong; the sync client says what holds what (test_cli_exits)."""

    async def get(self: Any, key: str) -> bytes:
        return b'{"correlation_id": 5}'

    async def run() -> BaseException:
        app = AsyncClient(NO_REDIS)
        app._redis = bounded_client(NO_REDIS.redis_url, 1.0)
        monkeypatch.setattr(type(app._redis), "get", get)
        try:
            await app.result("c1", wait_s=0)
        except Exception as exc:  # what it raises is the subject
            return exc
        finally:
            await app._redis.aclose()
        raise AssertionError("a value that is no result was taken for one")

    raised = asyncio.run(run())
    assert isinstance(raised, RuntimeError)
    assert "holds no result of c1 under llmq:result:{default}:c1" in str(raised), raised
