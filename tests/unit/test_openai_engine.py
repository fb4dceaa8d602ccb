"""OpenAIEngine against a small in-test HTTP server that injects faults.

The happy path against a real vLLM server is in tests/integration/test_openai_engine.py;
these tests cover what a healthy server never does: errors, resets, stalls, Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import pytest
from aiohttp import web

from schemas.catalog import Catalog, ModelSpec
from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatBody, ChatMessage
from schemas.retry import RetryPolicy
from workers.__main__ import engine_factory
from workers.__main__ import main as worker_main
from workers.breaker import CircuitBreaker
from workers.engine import EngineStep
from workers.openai_engine import OpenAIEngine
from workers.settings import WorkerSettings

pytestmark = pytest.mark.timeout(60)

Reply: TypeAlias = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY = ChatBody(messages=[ChatMessage(role="user", content="Say hi")], max_tokens=8)
FAST = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, budget_s=10.0)


@dataclass
class Server:
    """Answers the n-th chat request with the n-th reply (the last one repeats); records
    what came (headers with lower-case names)."""

    replies: list[Reply]
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    cut: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a client went away in the middle of a stream."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.arrived.append(time.monotonic())
        self.bodies.append(await request.json())
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        reply = self.replies[min(len(self.bodies), len(self.replies)) - 1]
        return await reply(request)


@asynccontextmanager
async def running(*replies: Reply) -> AsyncIterator[tuple[Server, str]]:
    """The server on a free loopback port, and its base URL."""
    server = Server(list(replies))
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield server, f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def chunk(text: str = "", finish: str | None = None, logprob: float | None = None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    if logprob is not None:
        top = [{"token": text, "logprob": logprob, "bytes": None}, {"token": "?", "logprob": -9}]
        entry = {"token": text, "logprob": logprob, "bytes": None, "top_logprobs": top}
        choice["logprobs"] = {"content": [entry]}
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


def usage(prompt: int, completion: int, cached: object = None) -> bytes:
    counts: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached is not None:
        counts["prompt_tokens_details"] = {"cached_tokens": cached}
    return b"data: " + json.dumps({"choices": [], "usage": counts}).encode() + b"\n\n"


def stream(
    *events: bytes, delay_s: float = 0.0, done: bool = True, server: Server | None = None
) -> Reply:
    """An event stream; with `server`, a client that goes away mid-stream sets server.cut."""

    async def reply(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for event in events:
                await resp.write(event)
                await asyncio.sleep(delay_s)
            if done:
                await resp.write(b"data: [DONE]\n\n")
        except ConnectionResetError:
            if server is not None:
                server.cut.set()
            raise
        return resp

    return reply


def ok(text: str = "Hi there", prompt: int = 7) -> Reply:
    words = text.split(" ")
    parts = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return stream(*(chunk(p) for p in parts), chunk(finish="stop"), usage(prompt, len(parts)))


def status(code: int, message: str = "boom", headers: dict[str, str] | None = None) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        body = {"error": {"message": message, "type": "Error", "code": code}}
        return web.json_response(body, status=code, headers=headers)

    return reply


async def reset(request: web.Request) -> web.StreamResponse:
    """Drop the connection without an answer."""
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(0.05)
    return web.Response()


def slow(seconds: float, then: Reply) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await then(request)

    return reply


def spec(url: str, **fields: Any) -> ModelSpec:
    return ModelSpec(name="remote-model", engine="openai", url=url, **fields)


def engine(
    url: str, *, threshold: int = 50, retry: RetryPolicy = FAST, **kwargs: Any
) -> OpenAIEngine:
    breaker = CircuitBreaker(f"test-{url}", failure_threshold=threshold, cooldown_s=60.0)
    return OpenAIEngine(spec(url), retry=retry, breaker=breaker, **kwargs)


async def collect(eng: OpenAIEngine, body: ChatBody = BODY) -> list[EngineStep]:
    try:
        return [step async for step in eng.generate("req-1", body, 1)]
    finally:
        await eng.abort_all()


async def failure(eng: OpenAIEngine, body: ChatBody = BODY) -> LlmqError:
    with pytest.raises(LlmqError) as caught:
        await collect(eng, body)
    return caught.value


def test_streams_steps_and_takes_the_counts_from_usage() -> None:
    async def scenario() -> None:
        async with running(ok("The capital is Paris", prompt=11)) as (server, url):
            steps = await collect(engine(url))
        assert "".join(s.text for s in steps) == "The capital is Paris"
        assert sum(s.new_tokens for s in steps) == 4
        assert steps[-1].finished and steps[-1].finish_reason == "stop"
        assert steps[-1].prompt_tokens == 11
        sent = server.bodies[0]
        assert sent["model"] == "remote-model"
        assert sent["stream"] is True
        assert sent["stream_options"] == {"include_usage": True}
        assert sent["max_tokens"] == 8
        assert "priority" not in sent and "logprobs" not in sent and "ignore_eos" not in sent
        assert not {"top_k", "min_p", "repetition_penalty", "min_tokens"} & set(sent)

    asyncio.run(scenario())


def test_usage_corrects_the_count_of_chunks() -> None:
    """A chunk may carry several tokens (or none): usage is the truth when it comes."""

    async def scenario() -> None:
        reply = stream(chunk("Hello wor"), chunk("ld", finish="length"), usage(3, 5, cached=2))
        async with running(reply) as (_, url):
            steps = await collect(engine(url))
        assert sum(s.new_tokens for s in steps) == 5
        assert steps[-1].finish_reason == "length"
        assert steps[-1].cached_tokens == 2, "the server's cached prompt tokens, when it says"

    asyncio.run(scenario())


@pytest.mark.parametrize("cached", [-1, "3", 2.5])
def test_a_cached_count_that_is_not_one_is_left_out(cached: object) -> None:
    async def scenario() -> None:
        reply = stream(chunk("Hi", finish="stop"), usage(3, 1, cached=cached))
        async with running(reply) as (_, url):
            steps = await collect(engine(url))
        assert steps[-1].finish_reason == "stop" and steps[-1].cached_tokens is None

    asyncio.run(scenario())


def test_without_usage_chunks_are_counted() -> None:
    async def scenario() -> None:
        async with running(stream(chunk("a"), chunk("b"), chunk("c", finish="stop"))) as (_, url):
            steps = await collect(engine(url))
        assert sum(s.new_tokens for s in steps) == 3
        assert steps[-1].prompt_tokens == 0

    asyncio.run(scenario())


FORMAT = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}


def test_passes_the_sampling_fields_logprobs_priority_and_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REMOTE_KEY", "s3cret")
    body = ChatBody(
        messages=[ChatMessage(role="user", content="x")],
        max_tokens=3,
        temperature=0.0,
        top_p=0.9,
        stop=["\n"],
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logprobs=True,
        top_logprobs=2,
        logit_bias={50256: -100},
        ignore_eos=True,
        top_k=4,
        min_p=0.0,
        repetition_penalty=1.3,
        min_tokens=2,
        response_format=FORMAT,
    )
    reply = stream(chunk("A", logprob=-0.5), chunk("B", "stop", logprob=-1.5), usage(2, 2))

    async def scenario() -> None:
        async with running(reply) as (server, url):
            remote = spec(url, remote_model="org/big", api_key_env="REMOTE_KEY")
            key = WorkerSettings().api_key(remote)
            eng = OpenAIEngine(remote, api_key=key, send_priority=True)
            steps = await collect(eng, body)
        assert [(t.token, t.logprob) for s in steps for t in s.logprobs] == [
            ("A", -0.5),
            ("B", -1.5),
        ]
        tops = [[(x.token, x.logprob) for x in t.top_logprobs] for s in steps for t in s.logprobs]
        assert tops == [[("A", -0.5), ("?", -9)], [("B", -1.5), ("?", -9)]]
        sent = server.bodies[0]
        assert sent["model"] == "org/big"
        assert sent["logprobs"] is True and sent["top_logprobs"] == 2
        assert sent["ignore_eos"] is True and sent["logit_bias"] == {"50256": -100}
        assert sent["response_format"] == FORMAT
        assert sent["priority"] == 1
        assert {k: sent[k] for k in ("temperature", "top_p", "stop", "seed")} == {
            "temperature": 0.0,
            "top_p": 0.9,
            "stop": ["\n"],
            "seed": 7,
        }
        assert (sent["presence_penalty"], sent["frequency_penalty"]) == (0.5, -0.5)
        assert (sent["top_k"], sent["repetition_penalty"], sent["min_tokens"]) == (4, 1.3, 2)
        assert "min_p" not in sent  # at its neutral value
        assert server.headers[0]["authorization"] == "Bearer s3cret"

    asyncio.run(scenario())


def test_a_missing_api_key_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$NO_SUCH_KEY"):
        WorkerSettings().api_key(spec("http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY"))


def test_server_errors_and_resets_are_retried_until_an_answer() -> None:
    async def scenario() -> None:
        async with running(status(500), reset, status(502), ok()) as (server, url):
            steps = await collect(engine(url))
        assert "".join(s.text for s in steps) == "Hi there"
        assert len(server.bodies) == 4
        request_ids = [h["x-request-id"] for h in server.headers]
        assert request_ids == ["req-1.1", "req-1.2", "req-1.3", "req-1.4"]

    asyncio.run(scenario())


def test_retry_after_is_honoured() -> None:
    async def scenario() -> None:
        async with running(status(429, "slow down", {"Retry-After": "1"}), ok()) as (server, url):
            await collect(engine(url))
        assert server.arrived[1] - server.arrived[0] >= 0.95

    asyncio.run(scenario())


def test_a_stalled_server_times_out_and_is_retried() -> None:
    async def scenario() -> None:
        async with running(slow(2.0, ok()), ok("fast")) as (server, url):
            steps = await collect(engine(url, read_timeout_s=0.3))
        assert "".join(s.text for s in steps) == "fast"
        assert len(server.bodies) == 2

    asyncio.run(scenario())


def test_after_the_retries_a_retriable_engine_error_not_unavailable() -> None:
    async def scenario() -> None:
        async with running(status(503, "overloaded", {"Retry-After": "0"})) as (server, url):
            error = await failure(engine(url))
        assert error.code is ErrorCode.ENGINE_ERROR
        assert error.retriable
        assert "failed 4 time(s)" in error.message and "HTTP 503: overloaded" in error.message
        assert error.retried  # so the stream processor does not retry it again
        assert error.retry_after_s == 0.0
        assert len(server.bodies) == 4

    asyncio.run(scenario())


def test_an_unreachable_server_is_an_engine_error() -> None:
    async def scenario() -> None:
        async with running(ok()) as (_, url):
            pass  # the port is free again: nothing listens there
        error = await failure(engine(url))
        assert error.code is ErrorCode.ENGINE_ERROR
        assert "ClientConnectorError" in error.message

    asyncio.run(scenario())


def test_the_breaker_opens_after_n_failures_and_then_fails_fast() -> None:
    async def scenario() -> None:
        async with running(status(500)) as (server, url):
            eng = engine(url, threshold=3, retry=RetryPolicy(max_attempts=1))
            for _ in range(3):
                once = await failure(eng)
                assert once.code is ErrorCode.ENGINE_ERROR
                assert not once.retried  # one attempt: the stream processor may retry it
            started = time.monotonic()
            error = await failure(eng)
            assert time.monotonic() - started < 0.1
        assert len(server.bodies) == 3
        assert error.code is ErrorCode.ENGINE_ERROR
        assert "circuit" in error.message and "open since" in error.message
        assert error.retry_after_s is not None and 0 < error.retry_after_s <= 60

    asyncio.run(scenario())


def test_the_breaker_cuts_retries_short() -> None:
    """Requests in their retry loop stop as soon as the circuit opens."""

    async def scenario() -> None:
        async with running(status(500)) as (server, url):
            eng = engine(url, threshold=2, retry=RetryPolicy(max_attempts=10, base_delay_s=0.01))
            error = await failure(eng)
        assert "circuit" in error.message
        assert len(server.bodies) == 2

    asyncio.run(scenario())


def test_a_stream_that_breaks_mid_answer_is_not_retried() -> None:
    async def scenario() -> None:
        async with running(stream(chunk("Hello"), chunk(" wor"), done=False), ok()) as (s, url):
            eng = engine(url)
            seen: list[str] = []
            with pytest.raises(LlmqError) as caught:
                try:
                    async for step in eng.generate("req-1", BODY, 1):
                        seen.append(step.text)
                finally:
                    await eng.abort_all()
        assert seen == ["Hello", " wor"]
        assert caught.value.code is ErrorCode.ENGINE_ERROR
        assert "mid-answer" in caught.value.message
        assert not caught.value.retried
        assert len(s.bodies) == 1

    asyncio.run(scenario())


def test_an_error_event_mid_stream_is_an_engine_error() -> None:
    error_event = b'data: {"error": {"message": "engine crashed", "code": 500}}\n\n'

    async def scenario() -> None:
        async with running(stream(chunk("Hel"), error_event)) as (_, url):
            error = await failure(engine(url))
        assert error.code is ErrorCode.ENGINE_ERROR
        assert "engine crashed" in error.message

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (400, "temperature must be non-negative", ErrorCode.INVALID_REQUEST),
        (422, "field required", ErrorCode.INVALID_REQUEST),
        (400, "This model's maximum context length is 2048 tokens.", ErrorCode.PROMPT_TOO_LARGE),
        (413, "too big", ErrorCode.PROMPT_TOO_LARGE),
        (501, "n > 1 is not supported", ErrorCode.UNSUPPORTED),
    ],
)
def test_client_errors_map_to_their_code_with_the_servers_message(
    code: int, message: str, expected: ErrorCode
) -> None:
    async def scenario() -> None:
        async with running(status(code, message)) as (server, url):
            error = await failure(engine(url))
        assert error.code is expected
        assert error.message == message
        assert len(server.bodies) == 1

    asyncio.run(scenario())


@pytest.mark.parametrize(("code", "hint"), [(401, "api_key_env"), (404, "remote_model")])
def test_configuration_errors_are_engine_errors_without_retries(code: int, hint: str) -> None:
    async def scenario() -> None:
        async with running(status(code, "no")) as (server, url):
            error = await failure(engine(url))
        assert error.code is ErrorCode.ENGINE_ERROR
        assert hint in error.message
        assert len(server.bodies) == 1

    asyncio.run(scenario())


def test_closing_the_iterator_early_cuts_the_request() -> None:
    async def scenario() -> None:
        async with running(ok()) as (server, url):
            server.replies = [
                stream(*(chunk("tok ") for _ in range(200)), delay_s=0.02, server=server)
            ]
            eng = engine(url)
            steps = eng.generate("req-1", BODY, 1)
            first = await anext(steps)
            await steps.aclose()
            await asyncio.wait_for(server.cut.wait(), 5)
            await eng.abort_all()
        assert first.text == "tok "

    asyncio.run(scenario())


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "models-remote.toml"


def test_the_worker_serves_the_examples_remote_model_with_this_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REMOTE_LLM_API_KEY", "k")
    remote = Catalog.load(EXAMPLE).get("remote-large")
    assert remote is not None
    assert isinstance(engine_factory(WorkerSettings(), remote)(), OpenAIEngine)


def test_the_worker_refuses_to_start_without_the_api_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LLMQ_MODELS_FILE", str(EXAMPLE))
    monkeypatch.setenv("LLMQ_MODEL", "remote-large")
    monkeypatch.delenv("REMOTE_LLM_API_KEY", raising=False)
    assert worker_main() == 2
    assert "cannot start the worker: model remote-large:" in caplog.text
    assert "$REMOTE_LLM_API_KEY, which is not set" in caplog.text


def test_a_raw_prompt_is_refused_before_any_request() -> None:
    async def scenario() -> None:
        async with running(ok("never sent")) as (server, url):
            raw = BODY.model_copy(update={"raw_prompt": True})
            refused = await failure(engine(url), raw)
        assert refused.code is ErrorCode.UNSUPPORTED and "/v1/completions" in refused.message
        assert server.bodies == []

    asyncio.run(scenario())
