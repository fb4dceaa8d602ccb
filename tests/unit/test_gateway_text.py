"""The front door's text completions (`/v1/completions`): a body read as a raw-prompt
request, and answers in that API's shape, read back with the SDK's own types."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types import Completion

from gateway.text import DEFAULT_MAX_TOKENS, TextChunks, read_text_call, text_completion_of
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.request import MAX_CONTENT_CHARS, ChatMessage
from schemas.result import (
    ChatCompletion,
    Choice,
    ChoiceLogprobs,
    InferenceResult,
    TokenLogprob,
    TopLogprob,
    Usage,
)

CATALOG = Catalog.builtin()


def _read(**body: Any) -> Any:
    data = {"model": "smollm2-135m", "prompt": "Once upon a time", **body}
    return read_text_call(
        data, tenant="acme", lane=None, default_lane="interactive", catalog=CATALOG, timeout_s=60
    )


def _refused(code: ErrorCode, **body: Any) -> str:
    with pytest.raises(LlmqError) as caught:
        _read(**body)
    assert caught.value.code is code
    return caught.value.message


def test_a_prompt_is_one_raw_user_message_with_openais_default_length() -> None:
    call = _read(temperature=0, stop="\n", user="u1", echo=False, suffix=None, best_of=1)
    body = call.request.body
    assert call.text and body.raw_prompt is True
    assert [(m.role, m.content) for m in body.messages] == [("user", "Once upon a time")]
    assert body.max_tokens == DEFAULT_MAX_TOKENS == 16
    assert (body.temperature, body.stop) == (0.0, ["\n"])
    assert _read(prompt=["Once upon a time"]).request.body == _read().request.body


def test_logprobs_is_the_count_of_the_likeliest_tokens() -> None:
    body = _read(logprobs=3).request.body
    assert (body.logprobs, body.top_logprobs) == (True, 3)
    assert _read(logprobs=0).request.body.top_logprobs == 0
    for bad in (21, -1, True, "3"):
        assert "logprobs must be an integer from 0 to 20" in _refused(
            ErrorCode.INVALID_REQUEST, logprobs=bad
        )


def test_the_chat_options_llmq_reads_work_here_too() -> None:
    call = _read(n=2, seed=5, lane="batch", extra=None, top_k=4, max_tokens=3)
    assert call.n == 2 and call.request.lane.value == "batch"
    assert [r.body.seed for r in call.requests] == [5, 6]
    assert call.request.body.vllm_sampling == {"top_k": 4}


@pytest.mark.parametrize(
    ("body", "code", "why"),
    [
        ({"echo": True}, ErrorCode.UNSUPPORTED, "echo"),
        ({"suffix": "end"}, ErrorCode.UNSUPPORTED, "suffix"),
        ({"best_of": 3}, ErrorCode.UNSUPPORTED, "best_of"),
        ({"prompt": ["a", "b"]}, ErrorCode.UNSUPPORTED, "one prompt a request"),
        ({"prompt": [1, 2, 3]}, ErrorCode.UNSUPPORTED, "token ids"),
        ({"prompt": [[1, 2]]}, ErrorCode.UNSUPPORTED, "token ids"),
        ({"prompt": ""}, ErrorCode.INVALID_REQUEST, "must not be empty"),
        ({"prompt": "x" * 200_001}, ErrorCode.INVALID_REQUEST, "prompt holds 200001 characters"),
        ({"prompt": None}, ErrorCode.INVALID_REQUEST, "prompt must be a string"),
        ({"prompt": 7}, ErrorCode.INVALID_REQUEST, "prompt must be a string"),
        ({"messages": [{"role": "user", "content": "x"}]}, ErrorCode.UNSUPPORTED, "messages"),
        ({"response_format": {"type": "json_object"}}, ErrorCode.UNSUPPORTED, "response_format"),
        ({"top_logprobs": 2}, ErrorCode.UNSUPPORTED, "top_logprobs"),
        ({"max_tokens": 0}, ErrorCode.INVALID_REQUEST, "max_tokens"),
        ({"model": "gpt-9"}, ErrorCode.UNKNOWN_MODEL, "gpt-9"),
    ],
)
def test_what_is_not_served_is_refused_by_name(
    body: dict[str, Any], code: ErrorCode, why: str
) -> None:
    assert why in _refused(code, **body)


def test_a_non_object_body_is_refused() -> None:
    with pytest.raises(LlmqError, match="a JSON object"):
        read_text_call([], tenant="a", lane=None, default_lane="x", catalog=CATALOG, timeout_s=1)


def _result(cid: str, text: str, logprobs: list[TokenLogprob] | None = None) -> InferenceResult:
    choice = Choice(
        message=ChatMessage(role="assistant", content=text),
        finish_reason="length",
        logprobs=None if logprobs is None else ChoiceLogprobs(content=logprobs),
    )
    usage = Usage(prompt_tokens=4, completion_tokens=2, total_tokens=6)
    response = ChatCompletion(id="x", created=1, model="m", choices=[choice], usage=usage)
    return InferenceResult(correlation_id=cid, tenant="t", status="ok", response=response)


def _token(text: str, logprob: float, top: str | None = None) -> TokenLogprob:
    """A sampled token, and the likeliest one there (itself unless `top` is another)."""
    likeliest = TopLogprob(token=top or text, logprob=logprob if top is None else -0.1)
    return TokenLogprob(token=text, logprob=logprob, top_logprobs=[likeliest])


def test_answers_are_a_text_completion_as_the_sdk_reads_it() -> None:
    tokens = [_token("Hel", -0.5), _token("lo", -1.0, top=" there")]
    body = text_completion_of([_result("c", "Hello", tokens), _result("c-1", "Hey")])
    read = Completion.model_validate(body)
    assert (read.id, read.object, read.model) == ("cmpl-c", "text_completion", "m")
    assert [(c.index, c.text, c.finish_reason) for c in read.choices] == [
        (0, "Hello", "length"),
        (1, "Hey", "length"),
    ]
    logprobs = read.choices[0].logprobs
    assert logprobs is not None and read.choices[1].logprobs is None
    assert logprobs.tokens == ["Hel", "lo"] and logprobs.token_logprobs == [-0.5, -1.0]
    assert logprobs.top_logprobs == [{"Hel": -0.5}, {"lo": -1.0, " there": -0.1}]
    assert logprobs.text_offset == [0, 3]
    assert read.usage is not None and read.usage.completion_tokens == 4  # summed
    assert body["llmq"]["correlation_id"] == "c"


def test_chunks_are_text_completions_with_no_role_chunk() -> None:
    chunks = TextChunks("c1", 7, "m", include_usage=True)
    assert chunks.role() is None
    piece = chunks.content("lo", [_token("lo", -1.0)], offset=3)
    assert (piece["id"], piece["object"]) == ("cmpl-c1", "text_completion")
    [choice] = piece["choices"]  # the SDK builds a chunk unchecked: its finish_reason is null
    assert (choice["text"], choice["finish_reason"], piece["usage"]) == ("lo", None, None)
    assert choice["logprobs"]["text_offset"] == [3]
    end = Completion.model_validate(chunks.finish("stop", index=1))
    assert (end.choices[0].index, end.choices[0].text, end.choices[0].finish_reason) == (
        1,
        "",
        "stop",
    )
    usage = chunks.usage(Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3))
    assert usage["choices"] == [] and usage["object"] == "text_completion"
    assert "usage" not in TextChunks("c1", 7, "m", include_usage=False).content("x")


@pytest.mark.parametrize("prompt", ["", 5, "x" * (MAX_CONTENT_CHARS + 1)])
def test_a_refused_prompt_is_named_as_the_field_at_fault(prompt: object) -> None:
    with pytest.raises(LlmqError) as caught:
        _read(prompt=prompt)
    assert caught.value.param == "prompt"
