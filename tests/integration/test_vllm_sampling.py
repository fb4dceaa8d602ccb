"""A request's sampling fields as the installed vLLM takes them: each reaches its
SamplingParams, and vLLM's own checks accept every value llmq's bounds let through."""

from __future__ import annotations

import asyncio
import copy
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
from transformers import PreTrainedTokenizerBase

from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatBody

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def sampling_params() -> Callable[[ChatBody], Any]:
    """workers.vllm_engine.sampling_params, imported here: vLLM warns as it loads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from workers.vllm_engine import sampling_params  # noqa: PLC0415

    return sampling_params


def _body(**fields: Any) -> ChatBody:
    return ChatBody.model_validate({"messages": [{"role": "user", "content": "Hi"}], **fields})


def test_openais_fields_and_vllms_extensions_reach_the_sampling_params(
    sampling_params: Callable[[ChatBody], Any],
) -> None:
    params = sampling_params(
        _body(
            max_tokens=9,
            temperature=0.5,
            top_p=0.9,
            stop="END",
            seed=4,
            presence_penalty=0.25,
            frequency_penalty=-0.25,
            top_k=7,
            min_p=0.05,
            repetition_penalty=1.2,
            min_tokens=3,
        )
    )
    assert (params.max_tokens, params.temperature, params.top_p) == (9, 0.5, 0.9)
    assert (params.stop, params.seed) == (["END"], 4)
    assert (params.presence_penalty, params.frequency_penalty) == (0.25, -0.25)
    assert (params.top_k, params.min_p, params.repetition_penalty) == (7, 0.05, 1.2)
    assert params.min_tokens == 3


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"top_k": -1},
        {"top_k": 0},
        {"top_k": 2**31 - 1},
        {"min_p": 0.0},
        {"min_p": 1.0},
        {"repetition_penalty": 1e-9},
        {"repetition_penalty": 10.0},
        {"max_tokens": 32_768, "min_tokens": 32_768},
    ],
)
def test_vllm_accepts_every_bound_llmq_lets_through(
    sampling_params: Callable[[ChatBody], Any], fields: dict[str, Any]
) -> None:
    body = _body(**fields)
    params = sampling_params(body)  # vLLM checks its arguments as it makes them
    assert {name: getattr(params, name) for name in body.vllm_sampling} == body.vllm_sampling


def test_messages_a_chat_template_refuses_are_an_invalid_request(
    served_tokenizer: PreTrainedTokenizerBase,
) -> None:
    """A template that raises (Gemma's on a system message) fails the request, not the
    worker: it stopped it, on every worker the record reached, until its crash-loop bound."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from workers.vllm_engine import VllmEngine  # noqa: PLC0415

    engine = VllmEngine.__new__(VllmEngine)  # its tokenizer and spec only: no engine started
    tokenizer = copy.copy(served_tokenizer)
    tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    engine._tokenizer, engine._spec = cast(Any, tokenizer), Catalog.builtin().models[0]
    engine._tokenizing = ThreadPoolExecutor(1)
    system = {"role": "system", "content": "Be brief."}
    asked = _body(messages=[system, {"role": "user", "content": "Hi"}])

    async def first_step() -> object:
        return await anext(engine.generate("r1", asked, priority=0))

    with pytest.raises(LlmqError) as caught:
        asyncio.run(first_step())
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert "System role not supported" in caught.value.message
    assert engine.prompt_tokens(_body().messages) > 0  # what it takes still renders
