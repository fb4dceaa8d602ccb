"""Model routing on the real stack: "auto" with a cascade from the local vLLM worker to a
second tier behind vLLM's OpenAI server (HTTP engine), and fallback from a dead remote.

The session catalog (conftest.py) escalates answers whose mean token log-probability is
below -0.6. Measured with SmolLM2-135M, greedy: "What is the capital of France?" answers
at -0.35; the Old Norse haiku at -0.92.
"""

from __future__ import annotations

import pytest

from llmq.client import Client
from schemas.request import CacheMode
from schemas.route import AUTO
from tests.integration.helpers import metric
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

LOCAL, REMOTE, DEAD = "smollm2-135m", "smollm2-remote", "unreachable"


def test_a_confident_answer_stays_on_the_cheap_tier(client: Client) -> None:
    result = client.ask(
        "What is the capital of France?",
        model=AUTO,
        max_tokens=32,
        temperature=0.0,
        cache=CacheMode.OFF,
        timeout=300,
    )
    assert result.status == "ok", result.error
    assert result.model_used == LOCAL
    assert result.route is not None
    assert (result.route.requested, result.route.chain[:2]) == (AUTO, [LOCAL, REMOTE])
    assert result.route.cascade
    assert not result.route.escalated
    assert result.route.tried == []


def test_an_unsure_answer_escalates_to_the_next_tier(client: Client) -> None:
    result = client.ask(
        "Write a haiku about quantum chromodynamics in Old Norse.",
        model=AUTO,
        max_tokens=48,
        temperature=0.0,
        cache=CacheMode.OFF,
        timeout=300,
    )
    assert result.status == "ok", result.error
    assert result.text
    assert result.model_used == REMOTE, "answered by the second tier, over HTTP"
    assert result.route is not None
    assert result.route.escalated and not result.route.fell_back
    assert result.route.tried == [LOCAL]


def test_a_dead_remote_falls_back_and_its_breaker_opens(client: Client, stack: LocalStack) -> None:
    results = [
        client.ask(
            f"Name a fruit that starts with the letter {letter}.",
            model=DEAD,
            max_tokens=16,
            temperature=0.0,
            cache=CacheMode.OFF,
            timeout=300,
        )
        for letter in "ABCD"
    ]
    for result in results:
        assert result.status == "ok", result.error
        assert result.model_used == LOCAL
        assert result.route is not None
        assert result.route.fell_back and not result.route.escalated
        assert result.route.tried == [DEAD]
    names = [m.name for m in stack.catalog.models]
    port = stack.settings.metrics_base_port + 1 + names.index(DEAD)
    assert metric(port, "llmq_worker_breaker_state", model=DEAD) == 2, "open after 3 failures"
