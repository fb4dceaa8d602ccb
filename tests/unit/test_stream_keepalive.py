"""Streams that wait: one whose first pieces take past routes.HEADERS_WAIT_S starts its
response without them (an error then is an error event, not an HTTP error), and one silent
for sse.KEEPALIVE_S (its first piece queued, a tool call held until whole) sends a comment.
A proxy's idle timeout (nginx's, an AWS ALB's: 60 s) cut such a stream, and the SDK sent its
request again, at the end of the queue, each time."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent
from prometheus_client import REGISTRY
from pydantic import TypeAdapter
from starlette.types import Message
from vllm.benchmarks.lib.endpoint_request_func import StreamedResponseHandler

from gateway import routes, sse
from gateway.app import build
from gateway.openai import error_body
from gateway.settings import GatewaySettings
from llmq.streaming import Delta
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.request import DEFAULT_TENANT, InferenceRequest
from schemas.result import Usage
from schemas.tenants import TenantPolicy
from tests.unit.asgi import post_scope
from tests.unit.clock import run_virtual

pytestmark = pytest.mark.timeout(30)

MODEL = Catalog.builtin().default
SERVED = "the-served-model"
"""The model the first piece names (llmq's routing picked it): the chunks name it."""
KEEPALIVE_S = 0.2
HEADERS_WAIT_S = 0.1
QUEUED_S = 5 * KEEPALIVE_S
"""How long a first piece waits in its lane's queue here."""
SLACK_S = 1e-9
"""Float rounding: each test runs on virtual time (run_virtual), on which no time passes
while code runs, so the times below are the ones the door's timers were set for."""
USAGE = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]

Step = tuple[float, Delta | ErrorCode]
"""A stream's next piece (or its failure, an error of that code) after a wait."""


def answer(queued_s: float = QUEUED_S) -> list[Step]:
    """The answer "Hello world", its first piece after `queued_s`."""
    return [
        (queued_s, Delta("Hello", 0, model=SERVED)),
        (0.0, Delta(" world", 5, "stop", USAGE, model=SERVED)),
    ]


@dataclass
class Client:
    """llmq's client as the routes use it: the n-th request published follows the n-th
    script (the last one repeats; a resumed stream, the first); what was published and
    cancelled, and whose streams were closed."""

    scripts: list[list[Step]]
    submitted: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    async def submit_request(self, request: InferenceRequest) -> None:
        self.submitted.append(request.correlation_id)

    async def stored(self, correlation_id: str, **_: Any) -> None:
        return None

    async def follow(self, correlation_id: str, **_: Any) -> AsyncIterator[Delta]:
        index = self.submitted.index(correlation_id) if correlation_id in self.submitted else 0
        try:
            for wait_s, step in self.scripts[min(index, len(self.scripts) - 1)]:
                await asyncio.sleep(wait_s)
                if isinstance(step, ErrorCode):
                    raise LlmqError(step, "refused", retry_after_s=1.0)
                yield step
        finally:
            self.closed.append(correlation_id)

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        self.cancelled.append(correlation_id)


class Workers:
    async def serves(self, models: object) -> bool:
        return True


@pytest.fixture(autouse=True)
def _small_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_S", KEEPALIVE_S)
    monkeypatch.setattr(routes, "HEADERS_WAIT_S", HEADERS_WAIT_S)


def _app(monkeypatch: pytest.MonkeyPatch, client: Client) -> FastAPI:
    """The app without its lifespan; a stream's request is cancelled an hour after its
    client left (a test sees the timer set)."""
    app = build(GatewaySettings(resume_grace_s=3600), Catalog.builtin(), TenantPolicy.load(None))
    monkeypatch.setattr(app.state.door, "client", client)
    monkeypatch.setattr(app.state.door, "serving", Workers())
    return app


@dataclass
class Sent:
    """What the app sent, each message with when (seconds from the request), and the
    requests the door counted as waiting for their answer then."""

    messages: list[tuple[float, Message]]
    waiting: list[float]

    @property
    def start(self) -> tuple[float, int]:
        """When the response started, and its status."""
        return next(
            (t, m["status"]) for t, m in self.messages if m["type"] == "http.response.start"
        )

    @property
    def bodies(self) -> list[tuple[float, str]]:
        """The parts of the body, each with when."""
        return [
            (t, m["body"].decode())
            for t, m in self.messages
            if m["type"] == "http.response.body" and m.get("body")
        ]

    def before_first_event(self) -> list[str]:
        """The comments sent before the first event."""
        parts = [body for _, body in self.bodies]
        return parts[: next(i for i, p in enumerate(parts) if p != sse.KEEPALIVE)]

    def longest_silence_s(self) -> float:
        """The longest time from the response's start without a part of its body."""
        times = [self.start[0], *(t for t, _ in self.bodies)]
        return max(b - a for a, b in itertools.pairwise(times))

    def events(self) -> list[str]:
        return [body for _, body in self.bodies if body != sse.KEEPALIVE]


async def _exchange(
    app: FastAPI,
    path: str,
    body: dict[str, Any] | None,
    *,
    headers: dict[str, str] | None = None,
    leaves_after_s: float | None = None,
) -> Sent:
    """One request straight through ASGI (a GET without `body`); its client stays to the
    end (or leaves `leaves_after_s` after it came). What was sent, once the app returned
    and the cancels the door sent are done."""
    read = False
    loop = asyncio.get_running_loop()
    began = loop.time()

    async def receive() -> dict[str, Any]:
        nonlocal read
        if not read:
            read = True
            return {"type": "http.request", "body": json.dumps(body or {}).encode()}
        if leaves_after_s is None:
            await asyncio.Event().wait()
        await asyncio.sleep(began + (leaves_after_s or 0.0) - loop.time())
        return {"type": "http.disconnect"}

    sent: list[tuple[float, Message]] = []
    waiting: list[float] = []

    async def send(message: Message) -> None:
        sent.append((loop.time() - began, message))
        waiting.append(_sample("llmq_gateway_waiting"))

    scope = post_scope(app, path, {"content-type": "application/json", **(headers or {})})
    if body is None:
        scope |= {"method": "GET"}
    await app(scope, receive, send)
    await asyncio.gather(*app.state.door._background)
    return Sent(sent, waiting)


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _chat(**fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    } | fields


def _chunks(events: list[str]) -> list[ChatCompletionChunk]:
    assert events[-1] == sse.DONE
    return [
        ChatCompletionChunk.model_validate(json.loads(e.removeprefix("data: ")))
        for e in events[:-1]
    ]


def _kept_alive(sent: Sent, comments: int) -> None:
    """The response started within HEADERS_WAIT_S (well before its first piece), with a
    comment, and no part of it was ever further apart than KEEPALIVE_S from the one before;
    `comments` came before the first event at least."""
    assert sent.start[0] <= HEADERS_WAIT_S + SLACK_S < QUEUED_S
    assert sent.start[1] == 200
    assert sent.bodies[0][1] == sse.KEEPALIVE
    assert sent.bodies[0][0] - sent.start[0] <= SLACK_S
    assert sent.longest_silence_s() <= KEEPALIVE_S + SLACK_S
    assert len(sent.before_first_event()) >= comments
    assert set(sent.before_first_event()) == {sse.KEEPALIVE}


@pytest.mark.parametrize("n", [1, 2])
def test_a_stream_whose_first_piece_is_queued_starts_and_stays_alive_until_it_comes(
    monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """Its 200 and headers (the request's id among them: it can resume) after
    HEADERS_WAIT_S, a comment then and after each KEEPALIVE_S of silence, then its chunks in
    the served model's name, whole: of every choice. Until they come it is counted as
    waiting, and the time to them is observed when they came."""
    client = Client([answer()])
    app = _app(monkeypatch, client)
    before = _sample("llmq_gateway_waiting"), _sample("llmq_gateway_first_piece_seconds_sum")
    sent = run_virtual(_exchange(app, "/v1/chat/completions", _chat(n=n)))
    _kept_alive(sent, comments=3)
    comments = len(sent.before_first_event())
    assert sent.waiting[: 1 + comments] == [before[0] + 1] * (1 + comments)  # and the start
    assert sent.waiting[-1] == before[0] == _sample("llmq_gateway_waiting")
    observed_s = _sample("llmq_gateway_first_piece_seconds_sum") - before[1]
    assert QUEUED_S <= observed_s < QUEUED_S + SLACK_S
    start = next(m for _, m in sent.messages if m["type"] == "http.response.start")
    assert (b"x-request-id", client.submitted[0].encode()) in start["headers"]
    chunks = _chunks(sent.events())
    assert {c.model for c in chunks} == {SERVED}
    for index in range(n):
        said = [c.choices[0].delta.content for c in chunks if c.choices[0].index == index]
        assert said == ["", "Hello", " world", None]
    assert client.cancelled == [] and sorted(client.closed) == sorted(client.submitted)


def test_vllms_serving_benchmark_reads_a_stream_kept_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tools.bench.vllm_bench drives the door with vLLM's benchmark, which strips each read
    before its parser: a `: keep-alive` comment came out glued to the next event, which was
    lost (requests marked failed once their first token waited past HEADERS_WAIT_S)."""
    app = _app(monkeypatch, Client([answer()]))
    sent = run_virtual(_exchange(app, "/v1/chat/completions", _chat()))
    handler, read = StreamedResponseHandler(), []  # type: ignore[no-untyped-call]
    for _, part in sent.bodies:  # each part a read of its own, as they came apart in time
        chunk = part.encode().strip()
        if chunk:  # as vLLM's request function reads them
            read += [m for m in handler.add_chunk(chunk) if not m.startswith(":")]
    assert len(sent.before_first_event()) >= 3
    assert read == [e.strip() for e in sent.events()] and read[-1] == "data: [DONE]"


def test_a_refusal_before_the_response_starts_is_still_the_http_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Within HEADERS_WAIT_S the SDK gets its exception (a 429 here, its Retry-After)."""
    client = Client([[(HEADERS_WAIT_S / 4, ErrorCode.RATE_LIMITED)]])
    app = _app(monkeypatch, client)
    sent = run_virtual(_exchange(app, "/v1/chat/completions", _chat()))
    assert sent.start[1] == 429
    start = next(m for _, m in sent.messages if m["type"] == "http.response.start")
    assert (b"retry-after", b"1") in start["headers"]
    assert json.loads(sent.bodies[0][1])["error"]["message"] == "refused"
    assert sse.KEEPALIVE not in [body for _, body in sent.bodies]


@pytest.mark.parametrize("n", [1, 2])
def test_a_refusal_after_the_response_started_is_the_error_event(
    monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """The error event a stream sends for an error after its first piece; with n choices,
    the others (their first piece still to come) are cancelled at once, their streams
    closed."""
    refused: list[Step] = [(QUEUED_S, ErrorCode.RATE_LIMITED)]
    client = Client([refused, answer(queued_s=10.0)])
    app = _app(monkeypatch, client)
    sent = run_virtual(_exchange(app, "/v1/chat/completions", _chat(n=n)))
    _kept_alive(sent, comments=3)
    [event] = sent.events()  # that of an error after the first piece: the HTTP error's body
    assert (
        json.loads(event.removeprefix("data: ")) == error_body(ErrorCode.RATE_LIMITED, "refused")[1]
    )
    assert sorted(client.cancelled) == (sorted(client.submitted) if n > 1 else [])
    assert sorted(client.closed) == sorted(client.submitted)


def test_a_tool_call_held_until_whole_keeps_its_stream_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under "required" nothing is shown until the calls are whole: after the role chunk,
    comments until they are."""
    text = '[{"name": "f", "parameters": {}}]'
    pieces: list[Step] = [(0.0, Delta(text[:10], 0)), (QUEUED_S, Delta(text[10:], 10, "stop"))]
    client = Client([pieces])
    app = _app(monkeypatch, client)
    body = _chat(tools=TOOLS, tool_choice="required")
    sent = run_virtual(_exchange(app, "/v1/chat/completions", body))
    parts = [body for _, body in sent.bodies]
    assert sent.start[0] < HEADERS_WAIT_S  # its first piece came at once
    role = {"role": "assistant", "content": None}
    assert json.loads(parts[0].removeprefix("data: "))["choices"][0]["delta"] == role
    assert parts[1:4] == [sse.KEEPALIVE] * 3
    assert sent.longest_silence_s() <= KEEPALIVE_S + SLACK_S
    chunks = _chunks(sent.events())
    [called] = chunks[1].choices[0].delta.tool_calls or []
    assert called.function is not None and called.function.name == "f"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def _response_events(events: list[str]) -> list[ResponseStreamEvent]:
    reader: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
    read = []
    for event in events:
        name, body = event.split("\n", 1)
        read.append(reader.validate_python(json.loads(body.removeprefix("data: "))))
        assert name == f"event: {read[-1].type}"
    assert [e.sequence_number for e in read] == list(range(len(read)))
    return read


@pytest.mark.parametrize("refused", [False, True])
def test_a_streamed_response_opens_with_its_first_events_and_stays_alive(
    monkeypatch: pytest.MonkeyPatch, refused: bool
) -> None:
    """Past HEADERS_WAIT_S the response is created and in progress, as OpenAI's first
    events; then comments until its first piece; then its message, in the served model's
    name; or, refused, the `error` and `response.failed` events of an error mid-stream."""
    script: list[Step] = [(QUEUED_S, ErrorCode.RATE_LIMITED)] if refused else answer()
    client = Client([script])
    app = _app(monkeypatch, client)
    body = {"model": MODEL, "input": "Hi", "stream": True, "store": False}
    sent = run_virtual(_exchange(app, "/v1/responses", body))
    assert sent.start[1] == 200 and sent.start[0] <= HEADERS_WAIT_S + SLACK_S
    assert sent.longest_silence_s() <= KEEPALIVE_S + SLACK_S
    parts = [body for _, body in sent.bodies]
    assert parts[2:5] == [sse.KEEPALIVE] * 3 and sse.KEEPALIVE not in parts[:2]
    events = _response_events(sent.events())
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    if refused:
        assert kinds[2:] == ["error", "response.failed"]
        failed = events[-1].response  # type: ignore[union-attr]
        assert (failed.status, failed.output) == ("failed", [])
        assert client.cancelled == []  # the request failed: nothing left to cancel
        return
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-1] == "response.completed"
    done = events[-1].response  # type: ignore[union-attr]
    assert (done.model, done.output_text) == (SERVED, "Hello world")


def test_a_client_gone_before_the_response_started_is_cancelled_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It never had the request's id (X-Request-Id): it cannot resume, so no grace."""
    client = Client([answer(queued_s=10.0)])
    app = _app(monkeypatch, client)
    sent = run_virtual(
        _exchange(app, "/v1/chat/completions", _chat(), leaves_after_s=HEADERS_WAIT_S / 4)
    )
    assert sent.start[1] == 499
    assert client.cancelled == client.submitted and not app.state.door._doomed


@pytest.mark.parametrize("n", [1, 2])
def test_a_client_gone_after_the_response_started_is_one_that_left_mid_stream(
    monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    """Its streams are closed as it leaves, their first pieces still to come; it has the
    request's id, so one choice's request is cancelled after the grace to resume it (the
    timer is set), n choices' at once, as when it leaves after the first piece."""
    client = Client([answer(queued_s=10.0)])
    app = _app(monkeypatch, client)
    left_s = HEADERS_WAIT_S + KEEPALIVE_S / 2
    sent = run_virtual(_exchange(app, "/v1/chat/completions", _chat(n=n), leaves_after_s=left_s))
    assert sent.start[1] == 200 and [body for _, body in sent.bodies] == [sse.KEEPALIVE]
    assert sorted(client.closed) == sorted(client.submitted) and len(client.submitted) == n
    doomed = app.state.door._doomed
    if n == 1:
        assert list(doomed) == [(DEFAULT_TENANT, client.submitted[0])] and not client.cancelled
    else:
        assert not doomed and sorted(client.cancelled) == sorted(client.submitted)


@dataclass
class Readers:
    """The door's count of a request's resumed streams (Redis's), as calls with when."""

    calls: list[tuple[str, float]] = field(default_factory=list)
    began: float = 0.0
    """The virtual loop's time when it starts (run_virtual)."""

    async def resumed(self, tenant: str, correlation_id: str) -> None:
        self.calls.append(("resumed", asyncio.get_running_loop().time() - self.began))

    def unread(self, tenant: str, correlation_id: str) -> None:
        self.calls.append(("unread", asyncio.get_running_loop().time() - self.began))


def _resumable(monkeypatch: pytest.MonkeyPatch, client: Client) -> tuple[FastAPI, Readers]:
    app = _app(monkeypatch, client)
    readers = Readers()
    monkeypatch.setattr(app.state.door, "resumed", readers.resumed)
    monkeypatch.setattr(app.state.door, "unread", readers.unread)
    return app, readers


RESUME = "/v1/results/r1/stream"


def test_a_resumed_stream_whose_client_leaves_before_its_first_piece_ends_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its first piece far off (queued again), the resume ends as its client leaves: its
    stream closed, no longer counted as read (the door it left may cancel it), and its
    request cancelled after the grace (the timer is set), as when it leaves later."""
    client = Client([answer(queued_s=10.0)])
    app, readers = _resumable(monkeypatch, client)
    exchange = _exchange(app, RESUME, None, headers={"last-event-id": "0"}, leaves_after_s=0.0)
    sent = run_virtual(asyncio.wait_for(exchange, 1.0))
    assert sent.start[1] == 499
    assert [name for name, _ in readers.calls] == ["resumed", "unread"]
    assert readers.calls[1][1] < HEADERS_WAIT_S
    assert client.closed == ["r1"] and list(app.state.door._doomed) == [(DEFAULT_TENANT, "r1")]


def test_a_resumed_stream_starts_and_stays_alive_until_its_first_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a call's stream: its first piece queued again, the response starts without it,
    and names its request (X-Request-Id: the SDK and the door's warnings read it)."""
    client = Client([answer()])
    app, readers = _resumable(monkeypatch, client)
    sent = run_virtual(_exchange(app, RESUME, None, headers={"last-event-id": "0"}))
    _kept_alive(sent, comments=3)
    start = next(m for _, m in sent.messages if m["type"] == "http.response.start")
    assert (b"x-request-id", b"r1") in start["headers"]
    chunks = _chunks(sent.events())
    assert [c.choices[0].delta.content for c in chunks] == ["", "Hello", " world", None]
    assert {c.model for c in chunks} == {SERVED}
    assert [name for name, _ in readers.calls] == ["resumed", "unread"]
