"""A call while Kafka or Redis is away: a 503 with Retry-After, which the SDK waits before it
tries again, the call's ids kept, and one warning without a traceback (llmq.throttle holds
its repeats). A send Kafka never takes (the client's idempotent producer gives no record up)
held the call for the whole outage, and a Kafka error was a 500 with a new id and an ERROR
traceback per request. Time is the loop's, virtual (tests/unit/clock.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError
from starlette.types import Message

from gateway.app import build
from gateway.door import AWAY_RETRY_S
from gateway.routes import KAFKA_AWAY, SUBMIT_WAIT_S
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.request import InferenceRequest
from schemas.tenants import TenantPolicy
from tests.unit.asgi import held_open, post_scope
from tests.unit.clock import run_virtual

pytestmark = pytest.mark.timeout(30)

KAFKA = "kafka-0.example:9092"
MODEL = Catalog.builtin().default
SCOPE = post_scope(None, "/v1/chat/completions", {"content-type": "application/json"})


class Unreachable:
    """llmq's client with Kafka away: a request is never taken; cancels are recorded."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.cancelled: list[str] = []

    async def submit_request(self, request: InferenceRequest) -> str:
        self.submitted.append(request.correlation_id)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        self.cancelled.append(correlation_id)


class Failing(Unreachable):
    """Kafka's metadata not had in time: aiokafka's send fails (after 40 s)."""

    async def submit_request(self, request: InferenceRequest) -> str:
        self.submitted.append(request.correlation_id)
        raise KafkaTimeoutError()


class Workers:
    async def serves(self, models: object) -> bool:
        return True


def _app(monkeypatch: pytest.MonkeyPatch, client: Unreachable) -> FastAPI:
    settings = GatewaySettings(kafka_bootstrap=KAFKA, redis_url="redis://127.0.0.1:1/0")
    app = build(settings, Catalog.builtin(), TenantPolicy.load(None))
    monkeypatch.setattr(app.state.door, "client", client)
    monkeypatch.setattr(app.state.door, "serving", Workers())
    return app


def _post(app: FastAPI, *, stream: bool, n: int) -> tuple[int, dict[str, str], Any]:
    """POST a call of `n` choices through ASGI, its client staying, on a loop whose time
    skips every wait; the status, headers and body, once the door's cancels are done."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        async with asyncio.timeout(10 * SUBMIT_WAIT_S):  # unbounded, the call ends here
            await app(SCOPE | {"app": app}, held_open(MODEL, stream=stream, n=n), send)
        await asyncio.gather(*app.state.door._background)

    run_virtual(run())
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, json.loads(answer)


def _warned_once_without_traceback(caplog: pytest.LogCaptureFixture, why: str) -> None:
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelno, r.exc_info) for r in records] == [(logging.WARNING, None)]
    assert why in records[0].getMessage()


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("stream", [False, True])
def test_a_call_kafka_does_not_take_is_a_503_and_cancelled(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, stream: bool, n: int
) -> None:
    """Every choice is cancelled: a record Kafka has not taken yet goes once it is back."""
    client = Unreachable()
    with caplog.at_level(logging.WARNING):
        status, headers, body = _post(_app(monkeypatch, client), stream=stream, n=n)
    assert (status, body["error"]["message"]) == (503, KAFKA_AWAY.message)
    assert headers["retry-after"] == f"{AWAY_RETRY_S:.0f}"
    first = client.submitted[0]
    assert (headers["x-request-id"], headers["x-llmq-correlation-id"]) == (first, first)
    assert len(client.submitted) == n and sorted(client.cancelled) == sorted(client.submitted)
    _warned_once_without_traceback(caplog, f"Kafka at {KAFKA} did not take its requests")


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_the_drain_bound_cuts_off_before_kafka_took_it_is_cancelled(
    monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """uvicorn cancels the calls still open at LLMQ_DRAIN_TIMEOUT_S: the records Kafka had
    not taken stayed in the producer, to be sent once it is back, and generated for
    nobody."""
    client = Unreachable()
    app = _app(monkeypatch, client)

    async def send(message: Message) -> None:
        raise AssertionError("a call cut off is not answered")

    async def run() -> None:
        call = asyncio.create_task(
            app(SCOPE | {"app": app}, held_open(MODEL, stream=stream, n=2), send)
        )
        while len(client.submitted) < 2:  # noqa: ASYNC110 -- polls the fake's plain state
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.gather(*app.state.door._background)

    run_virtual(run())
    assert len(client.submitted) == 2 and sorted(client.cancelled) == sorted(client.submitted)


def test_a_kafka_error_is_a_503_with_the_calls_ids(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """It was a 500 with a new req_ id, and an ERROR with a traceback per request."""
    client = Failing()
    with caplog.at_level(logging.WARNING):
        status, headers, body = _post(_app(monkeypatch, client), stream=False, n=1)
    assert (status, body["error"]["message"]) == (503, KAFKA_AWAY.message)
    assert headers["retry-after"] == f"{AWAY_RETRY_S:.0f}"
    assert headers["x-request-id"] == client.submitted[0]
    _warned_once_without_traceback(caplog, f"Kafka at {KAFKA} failed a request: KafkaTimeout")


@pytest.mark.parametrize(
    "refusal",
    [
        ReadOnlyError("You can't write against a read only replica."),
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    ],
)
def test_redis_refusing_writes_for_a_while_is_a_503_to_try_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, refusal: RedisError
) -> None:
    """A failover (a replica not promoted yet) or a full memory: waiting mends it. They are
    ResponseErrors, not connection errors, and were 500s with an ERROR traceback."""
    app = _app(monkeypatch, Unreachable())

    async def refused() -> None:
        raise refusal

    app.add_api_route("/refused", refused)
    with caplog.at_level(logging.WARNING):
        answer = TestClient(app, raise_server_exceptions=False).get("/refused")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == f"{AWAY_RETRY_S:.0f}"
    assert answer.json()["error"]["message"] == (
        "Redis, where the front door keeps responses, results and batches, is refusing "
        "writes; try again"
    )
    _warned_once_without_traceback(caplog, f"Redis is refusing writes: {type(refusal).__name__}")
