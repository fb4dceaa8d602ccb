"""Model routing on the real stack: "auto" with a cascade from the local vLLM worker to a
second tier behind vLLM's OpenAI server (HTTP engine), and fallback from a dead remote.

The session catalog (conftest.py) escalates answers whose mean token log-probability is
below its `escalate_below`. How sure SmolLM2-135M is of a given answer is the model's, and
the CPU's: "What is the capital of France?" answered at -0.35 on one machine and below -0.6
on another. So the tests first measure the local model's confidence in a few prompts, as
the cascade reads it, and route one it answers sure of itself and one it answers unsure:
what they check is llmq's rule, not the model's mood.
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
CANDIDATES = (
    "Count from 1 to 30: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
    "What is the capital of France?",
    "Repeat exactly: the cat sat on the mat. The cat sat on the mat. The cat sat on the",
    "Write a haiku about quantum chromodynamics in Old Norse.",
    "Invent a word for the smell of rain on hot asphalt and define it in Esperanto.",
    "Name three prime numbers above 1000 and prove each is prime, in Latin verse.",
)
"""Prompts from the likely sure to the likely unsure, greedy at MAX_TOKENS."""
MAX_TOKENS = 32
MARGIN = 0.05
"""How far from the threshold a measured confidence must be: the same greedy answer read
twice gives the same figure, but not a tie to decide."""


@pytest.fixture(scope="module")
def prompts(client: Client, stack: LocalStack) -> dict[bool, str]:
    """A prompt the local model answers sure of itself (True) and one it answers unsure
    (False), by the mean log-probability of its greedy answer's tokens, as the cascade
    reads it."""
    threshold = stack.catalog.routing.escalate_below
    found: dict[bool, str] = {}
    measured = []
    for prompt in CANDIDATES:
        result = client.ask(
            prompt,
            model=LOCAL,
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            cache=CacheMode.OFF,
            logprobs=True,
            timeout=300,
        )
        assert result.status == "ok", result.error
        assert result.response is not None
        tokens = result.response.choices[0].logprobs
        assert tokens is not None and tokens.content
        mean = sum(t.logprob for t in tokens.content) / len(tokens.content)
        measured.append((round(mean, 3), prompt))
        if abs(mean - threshold) >= MARGIN:
            found.setdefault(mean >= threshold, prompt)
        if len(found) == 2:
            return found
    raise AssertionError(f"no sure and unsure pair about {threshold}: {measured}")


def test_a_confident_answer_stays_on_the_cheap_tier(
    client: Client, prompts: dict[bool, str]
) -> None:
    result = client.ask(
        prompts[True],
        model=AUTO,
        max_tokens=MAX_TOKENS,
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


def test_an_unsure_answer_escalates_to_the_next_tier(
    client: Client, prompts: dict[bool, str]
) -> None:
    result = client.ask(
        prompts[False],
        model=AUTO,
        max_tokens=MAX_TOKENS,
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
