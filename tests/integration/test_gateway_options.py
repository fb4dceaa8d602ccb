"""The OpenAI request options the front door serves, through the real `openai` SDK on the
session's stack: JSON output, log-probabilities (whole and streamed), logit_bias, vLLM's
min_tokens, several choices (`n`), `service_tier`, and an answer too large to send back."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai import OpenAI
from transformers import PreTrainedTokenizerBase

from llmq.client import tail
from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.names import METERING
from schemas.settings import ServiceSettings
from tests.integration.helpers import (
    VERDICT_FORMAT,
    VERDICTS,
    collect,
    stored_result,
    unique_prompt,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "smollm2-135m"


def test_a_json_schema_holds_the_answer_and_keys_the_cache(sdk: OpenAI) -> None:
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": unique_prompt("Is the sky blue? Answer in JSON.")}
        ],
        "max_tokens": 32,
        "temperature": 0,
    }
    fmt: Any = VERDICT_FORMAT
    first = sdk.chat.completions.create(**ask, response_format=fmt)
    content = first.choices[0].message.content or ""
    assert json.loads(content) in VERDICTS, content
    assert first.choices[0].finish_reason == "stop"
    # The same request is the same answer; the same words as text are another question.
    again = sdk.chat.completions.create(**ask, response_format=fmt)
    assert (again.model_extra or {})["llmq"]["cache"] == "exact"
    assert again.choices[0].message.content == content
    text = sdk.chat.completions.create(**ask)
    assert (text.model_extra or {})["llmq"]["cache"] == "none"
    # A schema the engine cannot compile is the app's error, said by the engine.
    bogus: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(**{**ask, "max_tokens": 4}, response_format=bogus)
    assert bad.value.code == "invalid_request" and "bogus" in bad.value.message


def test_top_logprobs_come_with_a_whole_answer(sdk: OpenAI) -> None:
    answer = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": unique_prompt("Say hello.")}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content) == 3
    for token in logprobs.content:
        top = [t.logprob for t in token.top_logprobs]
        assert len(top) == 2 and top[0] >= top[1]
        assert token.logprob == pytest.approx(top[0])  # greedy: the most likely one
    assert "".join(t.token for t in logprobs.content) == answer.choices[0].message.content
    tops = [(t.token, t.bytes) for entry in logprobs.content for t in entry.top_logprobs]
    for text, raw in [(t.token, t.bytes) for t in logprobs.content] + tops:
        assert raw == list(text.encode()), text  # as vLLM's server gives them


@pytest.mark.timeout(420)
def test_an_answer_too_large_to_send_back_is_an_error_not_a_hang(
    sdk: OpenAI, door: str, service_settings: ServiceSettings
) -> None:
    # 1,600 tokens with 20 alternatives each: at least 585 bytes a token however short the
    # tokens and log-probabilities are, so past the 900,000 a completion record may take.
    metering = tail(service_settings.kafka_bootstrap, METERING)
    try:
        with pytest.raises(openai.BadRequestError) as large:
            sdk.with_options(timeout=360).chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": unique_prompt("Count to ten.")}],
                max_tokens=1600,
                logprobs=True,
                top_logprobs=20,
                extra_body={"ignore_eos": True},
            )
        cid = large.value.response.headers["x-llmq-correlation-id"]
        events = collect(
            metering, lambda rs: any(cid.encode() in r.value for r in rs), timeout_s=30
        )
    finally:
        metering.close()
    assert large.value.code == "answer_too_large"
    assert "past the 900000 llmq sends" in large.value.message
    assert stored_result(door, cid).error is not None
    [event] = [
        MeteringEvent.model_validate_json(r.value) for r in events if cid.encode() in r.value
    ]
    assert event.outcome == "answer_too_large" and event.completion_tokens == 1600


def test_each_stream_chunk_carries_its_tokens_logprobs(sdk: OpenAI) -> None:
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": unique_prompt("Count to ten.")}],
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
        "extra_body": {"ignore_eos": True},
    }

    def streamed() -> tuple[list[tuple[str, float]], str]:
        entries: list[tuple[str, float]] = []
        text = ""
        for chunk in sdk.chat.completions.create(**ask, stream=True):
            if not chunk.choices or chunk.choices[0].finish_reason:
                continue
            piece = chunk.choices[0].delta.content or ""
            logprobs = chunk.choices[0].logprobs
            mine = [(t.token, t.logprob) for t in (logprobs.content or [] if logprobs else [])]
            assert mine or not piece  # each chunk with text carries its own tokens
            entries, text = entries + mine, text + piece
        return entries, text

    fresh, text = streamed()
    assert len(fresh) == 6 and text
    # A repeat shares that generation (in flight, or stored once its result is), tokens and
    # all, whole or streamed.
    whole = sdk.chat.completions.create(**ask)
    assert (whole.model_extra or {})["llmq"]["cache"] in {"exact", "coalesced"}
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [(t.token, t.logprob) for t in logprobs.content] == fresh
    assert streamed() == (fresh, text)


def test_logit_bias_forces_a_token_and_pins_the_model(
    sdk: OpenAI, served_tokenizer: PreTrainedTokenizerBase
) -> None:
    token = served_tokenizer.encode(" maybe", add_special_tokens=False)[0]
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": unique_prompt("Say hello.")}],
        "max_tokens": 3,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    forced = sdk.chat.completions.create(**ask, logit_bias={str(token): 100})
    assert forced.choices[0].message.content == served_tokenizer.decode([token] * 3)
    # The engine names an id past its vocabulary; the router refuses "auto".
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(**ask, logit_bias={"99999999": 1})
    assert bad.value.code == "invalid_request" and "99999999" in bad.value.message
    with pytest.raises(openai.BadRequestError) as auto:
        sdk.chat.completions.create(**{**ask, "model": "auto"}, logit_bias={str(token): 1})
    assert auto.value.code == "invalid_request" and "logit_bias" in auto.value.message


def test_min_tokens_holds_back_the_end_of_the_answer(
    sdk: OpenAI, served_tokenizer: PreTrainedTokenizerBase
) -> None:
    """The end-of-sequence token biased to all but certain: the answer ends at once, unless
    vLLM's min_tokens holds it back (each its own generation: min_tokens keys the cache)."""
    eos = served_tokenizer.eos_token_id
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": unique_prompt("Tell me about cats.")}],
        "max_tokens": 8,
        "temperature": 0,
        "logit_bias": {str(eos): 100},
    }
    at_once = sdk.chat.completions.create(**ask)
    held = sdk.chat.completions.create(**ask, extra_body={"min_tokens": 5})
    assert at_once.usage is not None and held.usage is not None
    assert (at_once.choices[0].finish_reason, at_once.usage.completion_tokens) == ("stop", 1)
    assert (held.choices[0].finish_reason, held.usage.completion_tokens) == ("stop", 6)
    assert (held.model_extra or {})["llmq"]["cache"] == "none"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(**ask, extra_body={"min_tokens": 9})
    assert "min_tokens (9) is more than max_tokens (8)" in bad.value.message


def test_a_flex_tier_runs_on_the_batch_lane_and_storage_fields_pass(sdk: OpenAI, door: str) -> None:
    answer = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": unique_prompt("Name a fruit.")}],
        max_tokens=4,
        service_tier="flex",
        store=True,
        metadata={"app": "tests"},
        user="u-1",
    )
    stored = stored_result(door, answer.id.removeprefix("chatcmpl-"))
    assert stored.status == "ok" and stored.lane == Lane.BATCH


def test_n_choices_come_in_one_completion(sdk: OpenAI) -> None:
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": unique_prompt("Name a river.")}],
        "max_tokens": 4,
        "extra_body": {"ignore_eos": True},
    }
    greedy = sdk.chat.completions.create(**ask, n=3, temperature=0)
    assert [c.index for c in greedy.choices] == [0, 1, 2]
    assert len({c.message.content for c in greedy.choices}) == 1
    assert greedy.usage is not None and greedy.usage.completion_tokens == 12
    # Seeded choices are the answers of seed, seed + 1, ...: each one's own request.
    sampled = sdk.chat.completions.create(**ask, n=2, temperature=1.0, seed=5)
    alone = [sdk.chat.completions.create(**ask, temperature=1.0, seed=s) for s in (5, 6)]
    assert [c.message.content for c in sampled.choices] == [
        a.choices[0].message.content for a in alone
    ]
    # Streamed (generated now: seeds no request asked yet), each chunk names its choice and
    # the usage comes summed after both; the same call whole is the same answers.
    texts, usage = ["", ""], None
    for chunk in sdk.chat.completions.create(
        **ask, n=2, temperature=1.0, seed=11, stream=True, stream_options={"include_usage": True}
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
        usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens == 8
    whole = sdk.chat.completions.create(**ask, n=2, temperature=1.0, seed=11)
    assert texts == [c.message.content for c in whole.choices]
