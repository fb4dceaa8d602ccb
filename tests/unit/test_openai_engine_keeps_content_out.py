"""What a remote server sends with a failure (an unreadable event holding the answer's text,
an error body that echoes the prompt) stays out of the log and out of the breaker's reason,
which every tenant's refused request is told: content_log alone carries it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest

from schemas.errors import ErrorCode
from schemas.redact import CONTENT_LOGGER, log_content
from schemas.retry import RetryPolicy
from tests.unit.openai_server import Reply, engine, failure, running, status, stream

pytestmark = pytest.mark.timeout(60)

SECRET = "Patient John Doe, born 1961"
UNREADABLE = {  # logprob null: the answer's text in an event that fails validation
    "choices": [
        {
            "index": 0,
            "delta": {"content": SECRET},
            "logprobs": {"content": [{"token": SECRET, "logprob": None, "top_logprobs": []}]},
        }
    ]
}
MID_STREAM = {"error": {"message": f"engine crashed on {SECRET!r}", "code": 500}}


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, content logging on (off again afterwards)."""
    caplog.set_level(logging.DEBUG)
    log_content(True)
    try:
        yield caplog
    finally:
        log_content(False)


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (stream(b"data: " + json.dumps(UNREADABLE).encode() + b"\n\n"), "unreadable event"),
        (status(503, f"upstream said: {SECRET}"), "HTTP 503"),
        (status(401, f"bad key for request {SECRET}"), "HTTP 401"),
        (stream(b"data: " + json.dumps(MID_STREAM).encode() + b"\n\n"), "mid-stream"),
    ],
)
def test_what_the_server_sent_reaches_neither_the_log_nor_another_tenant(
    reply: Reply, kind: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[str, str]:
        async with running(reply) as (server, url):
            eng = engine(url, threshold=1, retry=RetryPolicy(max_attempts=1))
            first = await failure(eng)
            refused = await failure(eng)  # another tenant's request, say
        assert len(server.bodies) == 1, "the second was refused by the open circuit"
        assert first.code is refused.code is ErrorCode.ENGINE_ERROR
        return first.message, refused.message

    first, refused = asyncio.run(scenario())
    assert kind in first and SECRET not in first
    assert "circuit" in refused and kind in refused and SECRET not in refused
    logged = [r for r in debug_logs.records if r.name != CONTENT_LOGGER]
    assert any(kind in r.getMessage() for r in logged if r.levelno >= logging.WARNING)
    assert not [r.getMessage() for r in logged if SECRET in r.getMessage()]
    [said] = [r for r in debug_logs.records if r.name == CONTENT_LOGGER]
    assert said.levelno == logging.DEBUG and SECRET in said.getMessage()
    assert said.getMessage().startswith("req-1: attempt 1: the server said ")


def test_an_unreadable_event_is_named_by_its_kind_and_size() -> None:
    event = json.dumps(UNREADABLE)
    reply = stream(b"data: " + event.encode() + b"\n\n")

    async def scenario() -> str:
        async with running(reply) as (_, url):
            return (await failure(engine(url, retry=RetryPolicy(max_attempts=1)))).message

    message = asyncio.run(scenario())
    assert f"an unreadable event in the stream (ValidationError, {len(event)} characters)" in (
        message
    )
