"""Who gets a result, in both clients: each request its own tenant's reply, a waiter woken by
close(), a reader that outlives a failed poll, a stream read while its log would be pruned,
a stored result for a request that ended before anyone here waited, a send taken over by a
fresh producer. Kafka and Redis are fakes here; tests/integration runs the real ones."""

from __future__ import annotations

import asyncio
import json
import math
import queue
import threading
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import ProducerClosed
from aiokafka.structs import TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from llmq import aio, client
from llmq.aio import AsyncClient
from llmq.client import Client
from llmq.stored import stored_result
from llmq.streaming import Delta
from schemas.errors import LlmqError
from schemas.names import RESULTS, TOKENS
from schemas.request import ChatMessage, InferenceRequest
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings
from schemas.stream import TokenDelta
from tests.unit.stages import answered

pytestmark = pytest.mark.timeout(30)

NO_REDIS = ServiceSettings(redis_url="redis://127.0.0.1:1/0")
"""Nothing listens there: the result store is away, so only replies answer."""


def _record(result: InferenceResult) -> SimpleNamespace:
    return SimpleNamespace(value=result.model_dump_json().encode())


class Replies:
    """kafka-python's consumer of the reply topic: polls what was put, or fails once."""

    def __init__(self) -> None:
        self.records: queue.Queue[Any] = queue.Queue()

    def poll(self, timeout_ms: int) -> dict[str, list[Any]]:
        try:
            record = self.records.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            return {}
        if isinstance(record, Exception):
            raise record
        return {RESULTS: [record]}

    def close(self) -> None: ...


@pytest.fixture
def replies(monkeypatch: pytest.MonkeyPatch) -> Replies:
    consumer = Replies()
    monkeypatch.setattr(client, "tail", lambda *_, **__: consumer)
    return consumer


def _sync_client() -> Client:
    app = Client(NO_REDIS)
    app._send = lambda *_: None  # type: ignore[method-assign]
    return app


def test_two_tenants_with_one_id_each_get_their_own_reply(replies: Replies) -> None:
    app = _sync_client()
    try:
        app.submit("hi", tenant="acme", correlation_id="order-42")
        app.submit("hi", tenant="globex", correlation_id="order-42")
        replies.records.put(_record(answered("order-42", "acme", "for acme")))
        replies.records.put(_record(answered("order-42", "globex", "for globex")))
        assert app.result("order-42", timeout=20, tenant="acme").text == "for acme"
        assert app.result("order-42", timeout=20, tenant="globex").text == "for globex"
    finally:
        app.close()


def test_a_result_found_in_the_store_leaves_no_reply_behind(replies: Replies) -> None:
    app = _sync_client()
    answer = answered("c1", "default", "hi")

    def stored(tenant: str, correlation_id: str) -> InferenceResult:
        app._collect({RESULTS: [_record(answer)]})  # its reply comes while the store is read
        return answer

    app._stored = stored  # type: ignore[method-assign]
    try:
        app.submit("hi", correlation_id="c1")
        assert app.result("c1", timeout=20).text == "hi"
        assert not app._results and not app._pending
    finally:
        app.close()


def test_close_wakes_a_waiting_result_with_an_error(replies: Replies) -> None:
    app = _sync_client()
    app.submit("hi", correlation_id="c1")
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            app.result("c1", timeout=600)
        except BaseException as exc:
            raised.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    app.close()
    waiter.join(timeout=20)
    assert not waiter.is_alive()
    assert isinstance(raised[0], RuntimeError) and "closed" in str(raised[0])


def test_the_listener_outlives_a_failed_poll(replies: Replies) -> None:
    app = _sync_client()
    try:
        app.submit("hi", correlation_id="c1")
        replies.records.put(KafkaError("the broker went away a moment"))
        replies.records.put(_record(answered("c1", "default", "still here")))
        assert app.result("c1", timeout=20).text == "still here"
    finally:
        app.close()


async def _started(app: AsyncClient) -> None:
    async def send(topic: str, key: str, value: bytes) -> None: ...

    app._send = send  # type: ignore[method-assign]


def _delta(seq: int, text: str) -> bytes:
    delta = TokenDelta(correlation_id="c1", tenant="default", generation="g", seq=seq, text=text)
    return delta.model_dump_json().encode()


async def _next(pieces: AsyncIterator[Delta]) -> Delta:
    return await asyncio.wait_for(anext(pieces), 20)


def test_the_async_result_is_awaited_as_the_tenant_it_was_submitted_as() -> None:
    async def run() -> str | None:
        app = AsyncClient(NO_REDIS)
        await _started(app)
        correlation_id = await app.submit("hi", tenant="acme")
        app._on_result(_record(answered(correlation_id, "acme", "for acme")).value)
        return (await app.result(correlation_id, wait_s=1)).text

    assert asyncio.run(run()) == "for acme"


def test_close_fails_an_awaited_result_with_an_error() -> None:
    async def run() -> BaseException | None:
        app = AsyncClient(NO_REDIS)
        await _started(app)
        correlation_id = await app.submit("hi")
        waiter = asyncio.create_task(app.result(correlation_id, wait_s=600))
        await asyncio.sleep(0)
        await app.close()
        try:
            await waiter
        except BaseException as exc:
            return exc
        return None

    raised = asyncio.run(run())
    assert isinstance(raised, RuntimeError) and "closed" in str(raised)


def test_a_stream_read_before_its_first_piece_is_not_pruned() -> None:
    async def run() -> list[str]:
        app = AsyncClient(NO_REDIS, stream_retention_s=0)
        pieces = app.follow("c1", wait_s=600)
        first = asyncio.create_task(_next(pieces))
        await asyncio.sleep(0.01)
        app._streams.prune()  # nothing came yet: the log is older than its retention
        app._on_delta(_delta(0, "Hel"), b"c1")
        texts = [(await first).text]
        app._on_delta(_delta(1, "lo"), b"c1")
        texts.append((await _next(pieces)).text)
        return texts

    assert asyncio.run(run()) == ["Hel", "lo"]


def test_a_request_that_ended_before_it_was_followed_is_read_from_the_store() -> None:
    async def run() -> str:
        app = AsyncClient(NO_REDIS)
        answer = answered("c1", "default", "all of it")

        async def stored(key: tuple[str, str]) -> InferenceResult | None:
            return answer if key == ("default", "c1") else None

        app._stored = stored  # type: ignore[method-assign]
        return "".join([piece.text async for piece in app.follow("c1", wait_s=600)])

    assert asyncio.run(run()) == "all of it"


def test_a_send_waiting_in_a_producer_another_send_replaced_goes_through_the_fresh_one() -> None:
    class Producer:
        def __init__(self, full: bool) -> None:
            self.full = full
            self.sent: list[bytes] = []
            self.stopped = asyncio.Event()

        async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
            if self.full:  # no room in its batch until it stops
                await self.stopped.wait()
                raise ProducerClosed()
            self.sent.append(value)
            ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            ack.set_result(None)
            return ack

    async def run() -> tuple[list[bytes], list[bytes]]:
        app = AsyncClient(NO_REDIS)
        used, fresh = Producer(full=True), Producer(full=False)
        app._producer = used
        sending = asyncio.create_task(app._send("llmq.requests", "k", b"waits"))
        await asyncio.sleep(0.01)
        app._producer = fresh  # as _reread replaces it
        used.stopped.set()
        await asyncio.wait_for(sending, 20)
        return used.sent, fresh.sent

    assert asyncio.run(run()) == ([], [b"waits"])


def test_the_async_reader_outlives_a_failed_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_wait)
    answer = answered("c1", "default", "still here")

    class Consumer:
        def __init__(self) -> None:
            self.reads = 0

        async def getmany(self, timeout_ms: int) -> dict[Any, list[Any]]:
            self.reads += 1
            if self.reads == 1:
                raise ValueError("a record this client could not read")
            if self.reads == 2:
                return {TopicPartition(RESULTS, 0): [_record(answer)]}
            await _real_sleep(3600)
            return {}

    async def run() -> str | None:
        app = AsyncClient(NO_REDIS)
        await _started(app)
        await app.submit("hi", correlation_id="c1")
        reader = asyncio.create_task(app._read(Consumer()))
        try:
            return (await app.result("c1", wait_s=20)).text
        finally:
            reader.cancel()

    assert asyncio.run(run()) == "still here"


def test_a_start_that_fails_on_a_missing_topic_stops_what_it_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stopped: list[str] = []

    class Part:
        def __init__(self, name: str) -> None:
            self.name = name

        async def start(self) -> None: ...

        async def stop(self) -> None:
            stopped.append(self.name)

    async def limit(*_: object) -> None:
        return None

    async def missing(*_: object) -> None:
        raise RuntimeError(f"topic {TOKENS!r} does not exist")

    monkeypatch.setattr(aio, "read_record_limit", limit)
    monkeypatch.setattr(aio, "AIOKafkaProducer", lambda **_: Part("producer"))
    monkeypatch.setattr(aio, "AIOKafkaConsumer", lambda *_, **__: Part("consumer"))
    monkeypatch.setattr(aio, "at_end", missing)

    with pytest.raises(RuntimeError, match="does not exist"):
        asyncio.run(AsyncClient(NO_REDIS).start())
    assert sorted(stopped) == ["consumer", "producer"]


_real_sleep = asyncio.sleep


async def _no_wait(_: float) -> None:
    await _real_sleep(0)


def test_following_an_id_never_answered_leaves_nothing_waiting() -> None:
    """Any key holder could ask the front door to resume random ids: each left a future."""

    async def run() -> int:
        app = AsyncClient(NO_REDIS)
        for n in range(3):
            with pytest.raises(TimeoutError):
                [piece async for piece in app.follow(f"nope{n}", wait_s=0.05)]
        return len(app._pending)

    assert asyncio.run(run()) == 0


def test_two_follows_of_one_id_both_get_its_answer() -> None:
    async def run() -> list[str]:
        app = AsyncClient(NO_REDIS)

        async def read() -> str:
            return "".join([piece.text async for piece in app.follow("c1", wait_s=600)])

        both = asyncio.gather(read(), read())
        await asyncio.sleep(0.01)
        app._on_result(_record(answered("c1", "default", "for both")).value)
        texts = await asyncio.wait_for(both, 20)
        assert not app._pending
        return list(texts)

    assert asyncio.run(run()) == ["for both", "for both"]


def test_a_request_submitted_while_followed_keeps_its_waiter_when_the_follow_ends() -> None:
    async def run() -> str | None:
        app = AsyncClient(NO_REDIS)
        await _started(app)
        with pytest.raises(TimeoutError):
            async for _ in app.follow("c1", wait_s=0.05):
                pass  # it ends as the request is submitted
        following = app.follow("c1", wait_s=0.05)
        reading = asyncio.ensure_future(anext(following))
        await asyncio.sleep(0.01)
        await app.submit("hi", correlation_id="c1")
        with pytest.raises(TimeoutError):
            await reading
        app._on_result(_record(answered("c1", "default", "kept")).value)
        return (await app.result("c1", wait_s=0.05)).text

    assert asyncio.run(run()) == "kept"


def test_a_follow_cancelled_while_it_waits_leaves_no_task_behind() -> None:
    """A streamed HTTP client that left before the first piece: its wait for more pieces
    stayed pending until the log was pruned, then was destroyed with an ERROR per client."""

    async def main() -> list[asyncio.Task[Any]]:
        reader = AsyncClient(NO_REDIS)  # never started: no piece and no result will come
        reader._wait_for(("default", "r1"))  # as submit_request does
        first = asyncio.ensure_future(anext(reader.follow("r1", wait_s=60)))
        for _ in range(3):  # it reaches its wait for more pieces
            await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if "Event.wait" in repr(t.get_coro())]

    assert asyncio.run(main()) == []


def _newer(correlation_id: str, tenant: str = "default") -> bytes:
    """A reply a newer llmq wrote: a record version this one does not read."""
    wire = json.loads(_record(answered(correlation_id, tenant, "hi")).value)
    return json.dumps({**wire, "schema_version": 2}).encode()


def test_a_reply_this_llmq_cannot_read_ends_the_wait_naming_why(replies: Replies) -> None:
    """It waited its whole timeout, as if no reply had come (a front door: 580 s)."""
    app = _sync_client()
    try:
        app.submit("hi", correlation_id="c1")
        app.submit("hi", correlation_id="c2")
        replies.records.put(SimpleNamespace(value=_newer("c2", "globex")))  # not ours
        replies.records.put(SimpleNamespace(value=_newer("c1")))
        with pytest.raises(LlmqError, match="schema_version 2, written by a newer llmq"):
            app.result("c1", timeout=600)
        assert ("default", "c1") not in app._pending
        assert ("globex", "c2") not in app._results
    finally:
        app.close()


def test_an_async_reply_this_llmq_cannot_read_ends_the_wait_naming_why() -> None:
    async def run() -> None:
        app = AsyncClient(NO_REDIS)
        await _started(app)
        correlation_id = await app.submit("hi")
        app._on_result(_newer(correlation_id, "globex"))  # another tenant's: not this wait
        assert not app._pending[("default", correlation_id)].done()
        app._on_result(b'{"tenant": "default", "correlation_id": 7}')  # names no request
        foreign = {"tenant": "default", "correlation_id": correlation_id, "rating": 5}
        app._on_result(json.dumps(foreign).encode())  # another app's record: no result
        assert not app._pending[("default", correlation_id)].done()
        app._on_result(_newer(correlation_id))
        with pytest.raises(LlmqError, match="schema_version 2, written by a newer llmq"):
            await app.result(correlation_id, wait_s=600)
        assert not app._pending

    asyncio.run(run())


def test_an_answers_message_with_fields_a_newer_llmq_added_is_read_without_them() -> None:
    """The message model refuses unknown fields (a request's must): an answer's message
    from a newer worker was unreadable to every older reader, its request left waiting."""
    wire = json.loads(_record(answered("c1", "default", "hi")).value)
    message = wire["response"]["choices"][0]["message"]
    function = {"name": "f", "arguments": "{}", "strict": True}
    call = {"id": "call-1", "type": "function", "function": function, "index": 0}
    message.update(reasoning="...", tool_calls=[call])
    result = InferenceResult.model_validate_json(json.dumps(wire))
    read = result.response.choices[0].message if result.response else None
    assert read is not None and read.content == "hi" and read.tool_calls is not None
    assert read.tool_calls[0].function.arguments == "{}"
    with pytest.raises(ValidationError):  # a request's message still names what it refuses
        ChatMessage.model_validate({"role": "user", "content": "hi", "reasoning": "..."})


def test_a_stored_result_of_a_newer_llmq_is_named_so() -> None:
    with pytest.raises(LlmqError, match="schema_version 2, written by a newer llmq"):
        stored_result(_newer("c1"), "default", "c1", NO_REDIS.redis_url)


def test_ask_gives_up_with_its_request(replies: Replies) -> None:
    """A request ask() stopped waiting for was still queued, generated and billed: its
    deadline is the wait unless one is given."""
    app = _sync_client()
    sent: list[bytes] = []
    app._send = lambda topic, key, value: sent.append(value)  # type: ignore[method-assign]
    try:
        with pytest.raises(TimeoutError):
            app.ask("hi", timeout=0.01)
        request = InferenceRequest.model_validate_json(sent[0])
        assert request.deadline is not None
        assert request.deadline - request.created_at == pytest.approx(0.01)
        app.result = lambda *_, **__: answered("c", "default", "hi")  # type: ignore[method-assign]
        for endless in (math.inf, 0.0):  # no deadline a request could meet
            app.ask("hi", timeout=endless)
            assert InferenceRequest.model_validate_json(sent[-1]).deadline is None
    finally:
        app.close()
