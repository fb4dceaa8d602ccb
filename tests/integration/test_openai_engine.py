"""OpenAIEngine against vLLM's real OpenAI-compatible server (SmolLM2-135M on this machine)."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from transformers import PreTrainedTokenizerBase

from schemas.catalog import ModelSpec
from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatBody, ChatMessage
from schemas.retry import RetryPolicy
from tests.integration.helpers import SERVED, VERDICT_FORMAT, VERDICTS, fetch
from workers.engine import EngineStep
from workers.openai_engine import OpenAIEngine

pytestmark = pytest.mark.integration


@pytest.fixture
def base_url(openai_server: str) -> str:
    """The session's vLLM OpenAI server (tests/integration/conftest.py)."""
    return openai_server


def engine(base_url: str, **fields: object) -> OpenAIEngine:
    spec = ModelSpec.model_validate(
        {"name": SERVED, "engine": "openai", "url": base_url, "max_model_len": 2048, **fields}
    )
    return OpenAIEngine(spec, send_priority=True, retry=RetryPolicy(max_attempts=2))


def ask(text: str, **fields: object) -> ChatBody:
    return ChatBody.model_validate(
        {"messages": [ChatMessage(role="user", content=text)], "temperature": 0, **fields}
    )


async def collect(eng: OpenAIEngine, body: ChatBody, priority: int = 1) -> list[EngineStep]:
    return [step async for step in eng.generate("it-1", body, priority)]


def vllm_metric(base_url: str, name: str) -> float:
    metrics = fetch(base_url.removesuffix("/v1") + "/metrics")
    found = re.search(rf"^vllm:{name}\{{[^}}]*\}} (\S+)$", metrics, re.MULTILINE)
    assert found, f"vLLM exports no vllm:{name}"
    return float(found.group(1))


def running_requests(base_url: str) -> float:
    return vllm_metric(base_url, "num_requests_running")


def test_answers_within_its_schema_with_sane_counts(base_url: str) -> None:
    async def scenario() -> list[EngineStep]:
        eng = engine(base_url)
        try:
            fmt = {"response_format": VERDICT_FORMAT}
            return await collect(eng, ask("Is the sky blue? Answer in JSON.", max_tokens=32, **fmt))
        finally:
            await eng.abort_all()

    steps = asyncio.run(scenario())
    text = "".join(s.text for s in steps)
    assert json.loads(text) in VERDICTS, text  # the schema, not the model, decides the words
    final = steps[-1]
    assert final.finished and final.finish_reason == "stop"
    assert all(not s.finished for s in steps[:-1])
    assert 10 < final.prompt_tokens < 100
    assert 0 < sum(s.new_tokens for s in steps) <= 32


def test_logprobs_arrive_when_asked(base_url: str) -> None:
    async def scenario() -> tuple[list[EngineStep], list[EngineStep]]:
        eng = engine(base_url)
        try:
            body = ask("Name a colour.", max_tokens=8, ignore_eos=True)
            with_logprobs = await collect(eng, body.model_copy(update={"logprobs": True}))
            return with_logprobs, await collect(eng, body)
        finally:
            await eng.abort_all()

    with_logprobs, without = asyncio.run(scenario())
    logprobs = [t for s in with_logprobs for t in s.logprobs]
    assert len(logprobs) == sum(s.new_tokens for s in with_logprobs) == 8
    assert all(t.logprob <= 0 for t in logprobs)
    assert "".join(t.token for t in logprobs).startswith("".join(s.text for s in with_logprobs))
    assert not any(s.logprobs for s in without)


def test_top_logprobs_a_json_schema_and_logit_bias_reach_the_server(
    base_url: str, served_tokenizer: PreTrainedTokenizerBase
) -> None:
    ranked = ask("Is the sky blue?", max_tokens=4, ignore_eos=True, logprobs=True, top_logprobs=3)
    as_json = ask("Is the sky blue? Answer in JSON.", max_tokens=32, response_format=VERDICT_FORMAT)
    token = served_tokenizer.encode(" maybe", add_special_tokens=False)[0]
    biased = ask("Is the sky blue?", max_tokens=3, ignore_eos=True, logit_bias={token: 100})

    async def scenario() -> list[list[EngineStep]]:
        eng = engine(base_url)
        try:
            return [await collect(eng, body) for body in (ranked, as_json, biased)]
        finally:
            await eng.abort_all()

    ranked_steps, json_steps, biased_steps = asyncio.run(scenario())
    assert "".join(s.text for s in biased_steps) == served_tokenizer.decode([token] * 3)
    tokens = [t for s in ranked_steps for t in s.logprobs]
    assert len(tokens) == 4
    for token in tokens:
        top = [t.logprob for t in token.top_logprobs]
        assert len(top) == 3 and top == sorted(top, reverse=True)
        assert token.logprob == pytest.approx(top[0])  # greedy: the most likely one
    text = "".join(s.text for s in json_steps)
    assert json.loads(text) in VERDICTS, text


def test_concurrent_generations_in_all_lanes(base_url: str) -> None:
    questions = [f"What is {a} plus {a}?" for a in range(1, 9)]

    async def scenario() -> list[list[EngineStep]]:
        eng = engine(base_url)
        try:
            return await asyncio.gather(
                *(
                    collect(eng, ask(q, max_tokens=24, ignore_eos=True), i % 3)
                    for i, q in enumerate(questions)
                )
            )
        finally:
            await eng.abort_all()

    results = asyncio.run(scenario())
    assert len(results) == len(questions)
    for steps in results:  # each its whole generation (ignore_eos), whatever the lane
        assert steps[-1].finished and steps[-1].finish_reason == "length"
        assert sum(s.new_tokens for s in steps) == 24


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        (ask("Hi", max_tokens=5000), ErrorCode.INVALID_REQUEST, "max_model_len"),
        (ask("word " * 3000, max_tokens=5), ErrorCode.PROMPT_TOO_LARGE, "context length"),
    ],
)
def test_a_bad_request_maps_to_its_error(
    base_url: str, body: ChatBody, code: ErrorCode, says: str
) -> None:
    async def scenario() -> LlmqError:
        eng = engine(base_url)
        try:
            with pytest.raises(LlmqError) as caught:
                await collect(eng, body)
            return caught.value
        finally:
            await eng.abort_all()

    error = asyncio.run(scenario())
    assert error.code is code
    assert says in error.message


def test_an_unknown_remote_model_is_an_engine_error(base_url: str) -> None:
    async def scenario() -> LlmqError:
        eng = engine(base_url, remote_model="no-such-model")
        try:
            with pytest.raises(LlmqError) as caught:
                await collect(eng, ask("Hi", max_tokens=4))
            return caught.value
        finally:
            await eng.abort_all()

    error = asyncio.run(scenario())
    assert error.code is ErrorCode.ENGINE_ERROR
    assert "HTTP 404" in error.message and "no-such-model" in error.message


def test_closing_early_aborts_the_generation_in_vllm(base_url: str) -> None:
    generated = vllm_metric(base_url, "generation_tokens_total")

    async def scenario() -> float:
        eng = engine(base_url)
        body = ask("Count from 1 to 500, separated by commas.", max_tokens=1500, ignore_eos=True)
        steps = eng.generate("it-abort", body, 0)
        for _ in range(3):
            await anext(steps)
        running = running_requests(base_url)
        await steps.aclose()
        await eng.abort_all()
        return running

    assert asyncio.run(scenario()) == 1
    deadline = time.monotonic() + 240  # it ends either way: aborted, or its 1500 tokens out
    while running_requests(base_url) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running_requests(base_url) == 0
    # Aborted, not run to its end (ignore_eos: a generation not aborted writes all 1500).
    assert vllm_metric(base_url, "generation_tokens_total") - generated < 1500
