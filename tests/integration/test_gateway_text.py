"""OpenAI's text completions (`/v1/completions`) through the real `openai` SDK on the
session's stack: a raw prompt, with no chat template, answered whole or streamed, with
log-probabilities, cached apart from the chat request of the same words; by a model llmq
runs and by a remote vLLM server."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import OpenAI
from transformers import PreTrainedTokenizerBase

from tests.integration.helpers import unique_prompt

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "smollm2-135m"
REMOTE = "smollm2-remote"
"""The same weights behind vLLM's own server, asked by the HTTP engine (its /v1/completions)."""


@pytest.mark.parametrize("model", [MODEL, REMOTE])
def test_a_raw_prompt_is_completed_without_the_chat_template(
    sdk: OpenAI, served_tokenizer: PreTrainedTokenizerBase, model: str
) -> None:
    prompt = unique_prompt("The capital of  France   is")  # blanks the door would squeeze
    ask: dict[str, Any] = {"model": model, "prompt": prompt, "temperature": 0}
    exact: dict[str, Any] = {"extra_body": {"ignore_eos": True}}
    whole = sdk.completions.create(**ask, max_tokens=8, logprobs=2, **exact)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert (whole.model_extra or {})["llmq"]["model_used"] == model
    [choice] = whole.choices
    assert choice.finish_reason == "length" and choice.text
    assert whole.usage is not None and whole.usage.completion_tokens == 8
    # The prompt's own tokens, as vLLM's /v1/completions counts them: no template around it,
    # and not compressed (the session's stack compresses prompts).
    assert whole.usage.prompt_tokens == len(served_tokenizer.encode(prompt))
    assert choice.logprobs is not None and choice.logprobs.tokens is not None
    assert len(choice.logprobs.tokens) == 8
    tops = choice.logprobs.top_logprobs or []
    assert all(len(top) == 2 for top in tops)
    assert all(token in top for token, top in zip(choice.logprobs.tokens, tops, strict=True))
    assert (choice.logprobs.text_offset or [None])[0] == 0
    # With no max_tokens, OpenAI's default of 16.
    default = sdk.completions.create(**ask, **exact)
    assert default.usage is not None and default.usage.completion_tokens == 16
    # The same words as a chat are another request: the template makes it longer.
    chat = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0
    )
    assert (chat.model_extra or {})["llmq"]["cache"] == "none"
    assert chat.usage is not None and chat.usage.prompt_tokens > whole.usage.prompt_tokens
    again = sdk.completions.create(**ask, max_tokens=8, logprobs=2, **exact)
    assert (again.model_extra or {})["llmq"]["cache"] == "exact"
    assert again.choices[0].text == choice.text


def test_a_text_completion_streams_its_pieces_then_the_usage(sdk: OpenAI) -> None:
    ask: dict[str, Any] = {
        "model": MODEL,
        "prompt": unique_prompt("Once upon a time"),
        "max_tokens": 8,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    chunks = list(
        sdk.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    assert {c.object for c in chunks} == {"text_completion"} and len({c.id for c in chunks}) == 1
    *pieces, finish, usage = chunks
    assert [c.choices[0].finish_reason for c in pieces] == [None] * len(pieces)
    assert finish.choices[0].finish_reason == "length" and finish.choices[0].text == ""
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 8
    whole = sdk.completions.create(**ask)  # the stream's answer, from the cache
    assert "".join(c.choices[0].text for c in pieces) == whole.choices[0].text


def test_several_choices_and_what_is_not_served(sdk: OpenAI) -> None:
    ask: dict[str, Any] = {"model": MODEL, "prompt": unique_prompt("Hello"), "max_tokens": 3}
    two = sdk.completions.create(**ask, n=2, seed=1)
    assert [c.index for c in two.choices] == [0, 1]
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"echo": True}, "echo"),
        ({"best_of": 2}, "best_of"),
        ({"suffix": "The end."}, "suffix"),
        ({"prompt": ["a", "b"]}, "one prompt a request"),
        ({"prompt": [1, 2, 3]}, "token ids"),
        ({"logprobs": 21}, "logprobs must be an integer from 0 to 20"),
    ]
    for fields, why in refusals:
        with pytest.raises(openai.BadRequestError) as bad:
            sdk.completions.create(**{**ask, **fields})
        assert why in bad.value.message, (fields, bad.value.message)
