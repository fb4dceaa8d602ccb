"""OpenAIEngine against a server that refuses fields, as OpenAI's reasoning models do
(max_tokens, top_p, the penalties): sent again without them, once per engine."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from schemas.errors import ErrorCode
from schemas.retry import RetryPolicy
from tests.unit.openai_server import BODY, collect, engine, failure, ok, refusing, running

pytestmark = pytest.mark.timeout(60)

SAMPLING = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def test_max_tokens_refused_goes_as_max_completion_tokens_from_then_on() -> None:
    """Not a retry (none allowed here) nor a failure (one opens the breaker): the request is
    sent again at once, and the engine's next request goes straight with the new name."""

    async def scenario() -> None:
        async with running(refusing("max_tokens", then=ok())) as (server, url):
            eng = engine(url, threshold=1, retry=RetryPolicy(max_attempts=1))
            first = await collect(eng)
            second = await collect(eng)
        assert "".join(s.text for s in first) == "".join(s.text for s in second) == "Hi there"
        assert len(server.bodies) == 3, "one refusal in all"
        assert server.bodies[0]["max_tokens"] == 8
        for sent in server.bodies[1:]:
            assert sent["max_completion_tokens"] == 8 and "max_tokens" not in sent
            assert {name: sent[name] for name in SAMPLING} == {
                name: server.bodies[0][name] for name in SAMPLING
            }
        assert [h["x-request-id"] for h in server.headers] == ["req-1.1", "req-1.2", "req-1.1"]

    asyncio.run(scenario())


def test_sampling_fields_refused_at_their_defaults_are_left_out_from_then_on() -> None:
    refused = ("max_tokens", "top_p", "presence_penalty", "frequency_penalty")

    async def scenario() -> None:
        async with running(refusing(*refused, then=ok())) as (server, url):
            eng = engine(url, threshold=1)
            await collect(eng)
            steps = await collect(eng)
        assert "".join(s.text for s in steps) == "Hi there"
        assert len(server.bodies) == 6, "one refusal per field, then one request each"
        assert not set(refused) & set(server.bodies[-1])
        assert server.bodies[-1]["temperature"] == 1.0, "what the server did not refuse"

    asyncio.run(scenario())


def test_a_server_that_refuses_nothing_gets_every_sampling_field_at_its_default() -> None:
    """vLLM's server fills a field left out from the model's generation_config.json (a
    temperature of 0.6, say), not from OpenAI's defaults: leaving them out would change its
    answers, and make them differ from llmq's own engine's."""

    async def scenario() -> None:
        async with running(ok()) as (server, url):
            await collect(engine(url))
        sent = server.bodies[0]
        assert {name: sent[name] for name in SAMPLING} == {
            "temperature": 1.0,
            "top_p": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
        }
        assert sent["max_tokens"] == 8 and "max_completion_tokens" not in sent

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("field", "update"),
    [
        ("top_p", {"top_p": 0.5}),
        ("seed", {"seed": 3}),
        ("max_tokens", {"raw_prompt": True}),  # text completions have no other name for it
    ],
)
def test_a_refused_field_the_request_needs_is_its_fault_and_sent_once(
    field: str, update: dict[str, Any]
) -> None:
    async def scenario() -> None:
        async with running(refusing(field, then=ok())) as (server, url):
            error = await failure(engine(url, threshold=1), BODY.model_copy(update=update))
        assert error.code is ErrorCode.INVALID_REQUEST and not error.retriable
        assert error.message.startswith(f"Unsupported parameter: '{field}'")
        assert len(server.bodies) == 1

    asyncio.run(scenario())
