"""OpenAIEngine against an in-test server that injects faults: retries, backoff,
Retry-After, stalls, the circuit breaker, error statuses and streams cut short."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from schemas.errors import ErrorCode, LlmqError
from schemas.retry import RetryPolicy
from tests.unit.openai_server import (
    BODY,
    chunk,
    collect,
    engine,
    failure,
    ok,
    reset,
    running,
    slow,
    status,
    stream,
)
from workers.openai_engine import OpenAIEngine

pytestmark = pytest.mark.timeout(60)


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
        assert "failed 4 time(s)" in error.message and "last error: HTTP 503" in error.message
        assert "overloaded" not in error.message, "a body may echo a prompt: content_log's"
        assert error.retried  # so the stream processor does not retry it again
        assert error.retry_after_s == 0.0
        assert len(server.bodies) == 4

    asyncio.run(scenario())


def test_an_unreachable_server_is_an_engine_error(caplog: pytest.LogCaptureFixture) -> None:
    """Named to the app by its kind and the system's reason; its address in the log alone."""

    async def scenario() -> tuple[str, str]:
        async with running(ok()) as (_, url):
            pass  # the port is free again: nothing listens there
        error = await failure(engine(url))
        assert error.code is ErrorCode.ENGINE_ERROR
        return error.message, url

    message, url = asyncio.run(scenario())
    assert "ClientConnectorError: " in message
    port = url.split(":")[-1].split("/")[0]
    assert "127.0.0.1" not in message and port not in message
    assert any(f"127.0.0.1:{port}" in r.getMessage() for r in caplog.records)


def test_the_breaker_opens_after_n_failures_and_then_fails_fast() -> None:
    async def scenario() -> None:
        async with running(status(500)) as (server, url):
            eng = engine(url, threshold=3, retry=RetryPolicy(max_attempts=1))
            for _ in range(3):
                once = await failure(eng)
                assert once.code is ErrorCode.ENGINE_ERROR
                assert not once.retried  # one attempt: the stream processor may retry it
            error = await failure(eng)
        assert len(server.bodies) == 3  # the fourth failed without a call: fast
        assert error.code is ErrorCode.ENGINE_ERROR
        assert "circuit" in error.message and "open since" in error.message
        assert error.retry_after_s is not None and 0 < error.retry_after_s <= 60
        assert not error.retried  # no call was made for it: the stream processor may retry

    asyncio.run(scenario())


def test_the_breaker_cuts_retries_short() -> None:
    """Requests in their retry loop stop as soon as the circuit opens: not as retried (the
    call refused was not made), so the stream processor retries after the cooldown."""

    async def scenario() -> None:
        async with running(status(500)) as (server, url):
            eng = engine(url, threshold=2, retry=RetryPolicy(max_attempts=10, base_delay_s=0.01))
            error = await failure(eng)
        assert "circuit" in error.message
        assert len(server.bodies) == 2
        assert not error.retried
        assert error.retry_after_s is not None and 59 < error.retry_after_s <= 60

    asyncio.run(scenario())


def test_a_blip_that_opens_the_breaker_fails_no_request_in_flight_for_good() -> None:
    """A server that answers 503 to the first 20 calls, 20 requests in flight (the worker's
    defaults: 4 attempts, 5 failures open the circuit): each ends answered, or refused to be
    retried by the stream processor after the cooldown, never marked retried (which, without
    a fallback model, would dead-letter it)."""

    async def one(eng: OpenAIEngine, n: int) -> LlmqError | None:
        try:
            [_ async for _ in eng.generate(f"r{n}", BODY, 1)]
        except LlmqError as error:
            return error
        return None

    async def scenario() -> list[LlmqError | None]:
        async with running(*[status(503, "restarting")] * 20, ok()) as (_, url):
            eng = engine(url, threshold=5)
            try:
                return await asyncio.gather(*(one(eng, n) for n in range(20)))
            finally:
                await eng.abort_all()

    outcomes = asyncio.run(scenario())
    errors = [e for e in outcomes if e is not None]
    assert errors, "the circuit opened"
    for error in errors:
        assert error.code is ErrorCode.ENGINE_ERROR and "circuit" in error.message
        assert not error.retried
        assert error.retry_after_s is not None and error.retry_after_s > 0


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
        assert "the server reported an error mid-stream" in error.message
        assert "engine crashed" not in error.message, "its text is content_log's"

    asyncio.run(scenario())


DEEP = b"[" * 100_000 + b"]" * 100_000
"""JSON nested too deep for Python's parser: RecursionError, which would stop the worker."""


def test_an_event_nested_too_deep_is_a_server_error() -> None:
    async def scenario() -> None:
        async with running(stream(b"data: " + DEEP + b"\n\n"), ok()) as (server, url):
            steps = await collect(engine(url))
        assert "".join(s.text for s in steps) == "Hi there", "retried as a server's failure"
        assert len(server.bodies) == 2

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("code", "expected", "told"),
    [(503, ErrorCode.ENGINE_ERROR, "HTTP 503"), (400, ErrorCode.INVALID_REQUEST, "[[[[")],
)
def test_an_error_body_nested_too_deep_is_read_as_text(
    code: int, expected: ErrorCode, told: str
) -> None:
    """Its text is the request's own error's (a 400's), or content_log's (a server's)."""

    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(body=DEEP, status=code, content_type="application/json")

    async def scenario() -> None:
        async with running(reply) as (_, url):
            error = await failure(engine(url, retry=RetryPolicy(max_attempts=1)))
        assert error.code is expected and told in error.message

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


@pytest.mark.parametrize("code", [503, 404])
def test_an_error_names_the_models_server_not_its_address(code: int) -> None:
    """It reaches the app (HTTP body, results, batch error files): an internal host, and
    credentials in the catalog's url, are the worker log's alone."""

    async def scenario() -> str:
        async with running(status(code, "no", {"Retry-After": "0"})) as (_, url):
            secret = url.replace("http://", "http://proxyuser:Pr0xyPw@")
            return (await failure(engine(secret))).message

    message = asyncio.run(scenario())
    assert "Pr0xyPw" not in message and "127.0.0.1" not in message
    assert message.startswith("remote-model's server failed")


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (401, "api_key_env"),
        (404, "HTTP 404 at /v1/chat/completions (check url and remote_model 'remote-model')"),
        (200, "application/json, not an event stream"),
    ],
)
def test_configuration_errors_are_engine_errors_without_retries(code: int, hint: str) -> None:
    async def scenario() -> None:
        async with running(status(code, "no")) as (server, url):
            error = await failure(engine(url))
        assert error.code is ErrorCode.ENGINE_ERROR
        assert hint in error.message
        assert len(server.bodies) == 1
        # Nor retried by the stream processor on the same model: it falls back instead.
        assert error.retried

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


def test_a_text_event_with_lists_that_do_not_line_up_is_a_server_error() -> None:
    logprobs = {"tokens": ["a", "b"], "token_logprobs": [-1.0], "top_logprobs": None}
    event = {"choices": [{"index": 0, "text": "ab", "logprobs": logprobs}]}
    reply = stream(b"data: " + json.dumps(event).encode() + b"\n\n")

    async def scenario() -> None:
        async with running(reply) as (_, url):
            raw = BODY.model_copy(update={"raw_prompt": True, "logprobs": True})
            broken = await failure(engine(url), raw)
        assert broken.code is ErrorCode.ENGINE_ERROR and "unreadable event" in broken.message

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "event",
    [
        {"choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "a"}]}}]},
        {"choices": [{"index": 0, "delta": {"content": "a"}}], "usage": {"prompt_tokens": "5"}},
        {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": 1}]},
    ],
)
def test_an_event_whose_fields_are_not_openais_types_is_a_server_error(
    event: dict[str, object],
) -> None:
    """Read as it came, a list of parts or a count in a string failed the worker itself where
    the text is joined or the tokens summed."""
    reply = stream(b"data: " + json.dumps(event).encode() + b"\n\n")

    async def scenario() -> None:
        async with running(reply) as (_, url):
            broken = await failure(engine(url), BODY)
        assert broken.code is ErrorCode.ENGINE_ERROR and "unreadable event" in broken.message

    asyncio.run(scenario())
