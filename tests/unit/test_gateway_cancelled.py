"""What the front door cancels: the other choices of an n > 1 call one of which failed, and
every call it gave up on (its wait past, its drain bound reached), none counted in
llmq_gateway_cancelled_total, which counts the requests whose client went away; a cancel
Kafka did not take is sent again; and a stopping door sends the cancels it owes even where
Kafka takes none."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.types import Message

from gateway.app import build
from gateway.door import CANCEL_TRIES
from gateway.settings import GatewaySettings
from llmq.streaming import Delta
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.request import InferenceRequest
from schemas.result import ErrorInfo, InferenceResult
from schemas.tenants import TenantPolicy
from tests.unit.asgi import held_open, post_scope, replied

pytestmark = pytest.mark.timeout(30)

MODEL = Catalog.builtin().default
FAILURE = LlmqError(ErrorCode.ENGINE_ERROR, "the engine failed")
GRACE_S = 0.2
"""The grace to resume a stream: a stopping door waits it out (test_door_close_grace)."""


class Client:
    """llmq's client as the routes use it: the first choice fails (`refused`: it is not
    published; else its result is FAILURE, and its stream gives a first piece then FAILURE);
    the others are published, their streams give a first piece, and nothing more comes."""

    def __init__(self, *, refused: bool = False) -> None:
        self.refused = refused
        self.submitted: list[str] = []
        self.cancelled: list[str] = []

    async def submit_request(self, request: InferenceRequest) -> None:
        self.submitted.append(request.correlation_id)
        if self.refused and len(self.submitted) == 1:
            raise LlmqError(FAILURE.code, FAILURE.message)

    async def result(self, correlation_id: str, wait_s: float, **_: Any) -> InferenceResult:
        if correlation_id != self.submitted[0]:
            await asyncio.Event().wait()
        error = ErrorInfo.from_error(FAILURE)
        return InferenceResult(correlation_id=correlation_id, status="error", error=error)

    async def follow(self, correlation_id: str, **_: Any) -> AsyncIterator[Delta]:
        yield Delta("Hel", 0)
        if correlation_id == self.submitted[0]:
            raise LlmqError(FAILURE.code, FAILURE.message)
        await asyncio.Event().wait()

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        self.cancelled.append(correlation_id)


class Workers:
    async def serves(self, models: object) -> bool:
        return True

    async def close(self) -> None:
        pass


def _app(monkeypatch: pytest.MonkeyPatch, client: Client) -> FastAPI:
    """The app without its lifespan, GRACE_S before a leaving client's request is
    cancelled (streams of n choices do not resume: at once)."""
    settings = GatewaySettings(resume_grace_s=GRACE_S)
    app = build(settings, Catalog.builtin(), TenantPolicy.load(None))
    monkeypatch.setattr(app.state.door, "client", client)
    monkeypatch.setattr(app.state.door, "serving", Workers())
    return app


def _cancelled() -> float:
    return REGISTRY.get_sample_value("llmq_gateway_cancelled_total") or 0.0


def _all_cancelled_none_counted(client: Client, before: float) -> None:
    """Every request the call published was cancelled, none as a client that left."""
    assert sorted(client.cancelled) == sorted(client.submitted)
    assert _cancelled() == before


async def _call(app: FastAPI, *, stream: bool, leaves: bool = False, n: int = 2) -> tuple[int, str]:
    """POST a call of `n` choices straight through ASGI; its client stays to the end (or,
    `leaves`, leaves once the first events came): the status and the body sent, once the
    cancels the door sent are done."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "n": n}
    sent: list[Message] = []
    left, read = asyncio.Event(), False

    async def receive() -> dict[str, Any]:
        nonlocal read
        if not read:
            read = True
            return {"type": "http.request", "body": json.dumps({**body, "stream": stream}).encode()}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if leaves and message.get("body"):
            left.set()

    scope = post_scope(app, "/v1/chat/completions", {"content-type": "application/json"})
    await app(scope, receive, send)
    await asyncio.gather(*app.state.door._background)
    status, answer = replied(sent)
    return status, answer.decode()


@pytest.mark.parametrize("stream", [False, True])
def test_choices_cancelled_as_another_failed_are_not_counted_as_clients_gone(
    monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """Whole, the failure is the answer; streamed, it is an error event after the first
    pieces. Either way the other choice is cancelled, and no client went away."""
    client, before = Client(), _cancelled()
    status, answer = asyncio.run(_call(_app(monkeypatch, client), stream=stream))
    assert "engine_error" in answer and status == (200 if stream else 502)
    assert client.submitted[1] in client.cancelled
    assert _cancelled() == before


def test_choices_cancelled_as_another_was_not_published_are_not_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, before = Client(refused=True), _cancelled()
    status, _ = asyncio.run(_call(_app(monkeypatch, client), stream=False))
    assert status == 502 and client.cancelled == client.submitted[1:]
    assert _cancelled() == before


def test_a_client_that_leaves_has_each_choice_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream of two choices whose client leaves after the first pieces: both are
    cancelled at once (such a stream does not resume), and counted."""
    client = Client()
    client.submitted.append("none fails")  # every choice streams on
    before = _cancelled()
    status, answer = asyncio.run(_call(_app(monkeypatch, client), stream=True, leaves=True))
    assert status == 200 and '"index":1' in answer.replace(" ", "")
    assert sorted(client.cancelled) == sorted(client.submitted[1:])
    assert _cancelled() == before + 2


class Late(Client):
    """No answer comes within the door's wait: the door's timeout, as the client's wait
    raises it."""

    async def result(self, correlation_id: str, wait_s: float, **_: Any) -> InferenceResult:
        raise TimeoutError(f"no answer for {correlation_id} in time")

    async def follow(self, correlation_id: str, **_: Any) -> AsyncIterator[Delta]:
        raise TimeoutError(f"no answer for {correlation_id} in time")
        yield Delta("", 0)  # an async generator, as the client's


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("stream", [False, True])
def test_requests_the_door_gave_up_on_are_cancelled_not_counted(
    monkeypatch: pytest.MonkeyPatch, stream: bool, n: int
) -> None:
    """A 408 told the client its request expired: a worker on a slower clock, still
    generating, would have its answer stored and billed (and the SDK retries a 408)."""
    client, before = Late(), _cancelled()
    status, answer = asyncio.run(_call(_app(monkeypatch, client), stream=stream, n=n))
    assert status == 408 and "expired" in answer
    _all_cancelled_none_counted(client, before)


class LateAfterFirst(Client):
    """The first piece comes, then nothing within the door's wait."""

    async def follow(self, correlation_id: str, **_: Any) -> AsyncIterator[Delta]:
        yield Delta("Hel", 0)
        raise TimeoutError(f"no answer for {correlation_id} in time")


@pytest.mark.parametrize("n", [1, 2])
def test_a_stream_the_door_gave_up_on_after_its_first_piece_is_cancelled(
    monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """Its client got an `expired` event; the generation ran on, its answer stored and
    billed, where the stream had one choice."""
    client, before = LateAfterFirst(), _cancelled()
    status, answer = asyncio.run(_call(_app(monkeypatch, client), stream=True, n=n))
    assert status == 200 and "expired" in answer
    _all_cancelled_none_counted(client, before)


class Never(Client):
    """Published, and nothing ever comes: not a result, not a piece."""

    async def result(self, correlation_id: str, wait_s: float, **_: Any) -> InferenceResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def follow(self, correlation_id: str, **_: Any) -> AsyncIterator[Delta]:
        await asyncio.Event().wait()
        yield Delta("", 0)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("stream", [False, True])
def test_calls_the_drain_bound_cuts_off_are_cancelled(
    monkeypatch: pytest.MonkeyPatch, stream: bool, n: int
) -> None:
    """A stopping front door cancels the calls still open at LLMQ_DRAIN_TIMEOUT_S (uvicorn
    cancels their tasks): they ran on in the engines, billed for nobody."""
    client, before = Never(), _cancelled()
    app = _app(monkeypatch, client)
    receive = held_open(MODEL, stream=stream, n=n)

    async def send(message: Message) -> None:
        pass

    async def main() -> None:
        scope = post_scope(app, "/v1/chat/completions", {"content-type": "application/json"})
        call = asyncio.create_task(app(scope, receive, send))
        while len(client.submitted) < n:  # noqa: ASYNC110 -- polls the fake's plain state
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # it waits for the answers
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await app.state.door._settle_background()

    asyncio.run(main())
    _all_cancelled_none_counted(client, before)


class Away(Client):
    """Kafka away: a cancel is never taken; closing is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        raise KafkaTimeoutError("batch expired")

    async def close(self) -> None:
        self.closed = True


def test_a_door_that_cannot_send_its_cancels_still_stops_whole(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """close() stopped at the first cancel that failed: the rest were not tried, and the
    batch tasks and every client were left running."""
    client = Away()
    app = _app(monkeypatch, client)
    door = app.state.door

    async def main() -> None:
        for key in ("a", "b", "c"):
            door.cancel("default", key)  # each waits out its grace time
        await door.close()

    asyncio.run(main())
    assert client.closed
    assert "3 cancel(s) failed" in caplog.text


class MidStream(Away):
    """A first piece, then nothing: a generation under way; cancels are taken."""

    async def follow(self, correlation_id: str, **_: Any) -> AsyncIterator[Delta]:
        yield Delta("Hel", 0)
        await asyncio.Event().wait()

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        assert not self.closed, "a cancel after the client closed is never sent"
        self.cancelled.append(correlation_id)


@pytest.mark.parametrize("n", [1, 2])
def test_streams_the_drain_bound_cuts_mid_answer_are_cancelled_before_the_door_closes(
    monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """uvicorn cancels the calls at the bound, then at once runs the lifespan's close: a
    stream's events run in a task of their own, which learned of the cut after close had
    looked, so a single choice waited out a grace that never came (no cancel), and more
    were cancelled through a closed client, each counted as a client that left. A single
    choice is cancelled once its grace is over (unless resumed at another door), still
    before the client closes."""
    client, before = MidStream(), _cancelled()
    app = _app(monkeypatch, client)
    receive = held_open(MODEL, stream=True, n=n)
    pieces = asyncio.Event()

    async def send(message: Message) -> None:
        if message.get("body"):
            pieces.set()

    async def main() -> None:
        scope = post_scope(app, "/v1/chat/completions", {"content-type": "application/json"})
        call = asyncio.create_task(app(scope, receive, send))
        await pieces.wait()
        call.cancel()  # as uvicorn does at the drain bound, then the lifespan's close
        await app.state.door.close()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(main())
    _all_cancelled_none_counted(client, before)


class Flaky(Client):
    """Kafka slow: the first `refusals` cancels are not taken, the next ones are."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        if self.refusals:
            self.refusals -= 1
            raise KafkaTimeoutError("batch expired")
        await super().cancel(correlation_id, tenant)


@pytest.mark.parametrize(("refusals", "sent"), [(1, ["c1"]), (CANCEL_TRIES, [])])
def test_a_cancel_kafka_did_not_take_is_sent_again(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    refusals: int,
    sent: list[str],
) -> None:
    """It was dropped (the generation ran on, billed for nobody), and asyncio logged its
    error as never retrieved, with a traceback: now each try not taken is one warning, and
    one given up on says so."""
    client = Flaky(refusals)
    door = _app(monkeypatch, client).state.door

    async def main() -> None:
        door.cancel("default", "c1", grace=False)
        while door._background:  # asyncio.wait reads no outcome
            await asyncio.wait(set(door._background))
        gc.collect()  # a task's unread error is logged as it is collected

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert client.cancelled == sent
    assert "never retrieved" not in caplog.text
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == refusals and all("KafkaTimeoutError" in w for w in warned)
    if not sent:
        assert warned[-1].startswith("the cancel of default/c1 failed")


class LateResume(Late):
    """A request in flight (nothing stored) whose resumed stream gets nothing in time."""

    async def stored(self, correlation_id: str, **_: Any) -> InferenceResult | None:
        return None


def test_a_resumed_stream_the_door_gave_up_on_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, before = LateResume(), _cancelled()
    app = _app(monkeypatch, client)
    sent: list[Message] = []
    read = False

    async def receive() -> dict[str, Any]:  # as a server's: the request, then a client staying
        nonlocal read
        if not read:
            read = True
            return {"type": "http.request", "body": b""}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    async def main() -> None:
        scope = post_scope(app, "/v1/results/r1/stream", {"last-event-id": "0"}) | {"method": "GET"}
        await app(scope, receive, send)
        await asyncio.gather(*app.state.door._background)

    asyncio.run(main())
    assert replied(sent)[0] == 408
    assert client.cancelled == ["r1"] and _cancelled() == before
