"""OpenAI's text completions (`/v1/completions`) on the chat machinery: a prompt is a request
of one user message with no chat template around it (`raw_prompt`), and its answers go back
as `text_completion` objects and chunks, as vLLM's server sends them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.openai import (
    IGNORED,
    PASSED,
    TOOL_FIELDS,
    Call,
    Chunks,
    completion_of,
    given_fields,
    logprob_count,
    read_call,
)
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.request import MAX_CONTENT_CHARS
from schemas.result import InferenceResult, TokenLogprob

DEFAULT_MAX_TOKENS = 16
"""OpenAI's (and vLLM's) max_tokens of a text completion that names none."""
FIELDS = (
    (PASSED - {"messages", "top_logprobs", "response_format", *TOOL_FIELDS})
    | {"model", "n", "stream_options", "lane", "cache"}
    | set(IGNORED)
    | {"prompt", "echo", "suffix", "best_of"}
)
"""The body fields of a text completion llmq reads: OpenAI's, vLLM's sampling extensions
and llmq's own, as for chat."""


def read_text_call(
    data: object,
    *,
    tenant: str,
    lane: str | None,
    default_lane: str = Lane.INTERACTIVE.value,
    catalog: Catalog,
    timeout_s: float,
) -> Call:
    """The request a text-completion body asks for; LlmqError (400, 404) saying what is
    wrong. A null field is one not given."""
    data = given_fields(data)
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise LlmqError(
            ErrorCode.UNSUPPORTED,
            f"llmq serves text completions of one prompt; unsupported field(s): "
            f"{', '.join(unknown)}",
        )
    if data.pop("echo", False) is not False:
        raise LlmqError(ErrorCode.UNSUPPORTED, "echo (the prompt in the answer) is not served")
    if data.pop("suffix", "") != "":
        raise LlmqError(ErrorCode.UNSUPPORTED, "suffix (text after the answer) is not served")
    if data.pop("best_of", 1) != 1:
        why = "best_of is not served (nor by vLLM's engine); ask for n choices instead"
        raise LlmqError(ErrorCode.UNSUPPORTED, why)
    prompt = _prompt(data.pop("prompt", None))
    fields = {**data, "messages": [{"role": "user", "content": prompt}]}
    fields.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    if "logprobs" in data:
        fields.update(logprobs=True, top_logprobs=logprob_count(data["logprobs"], "logprobs"))
    return read_call(
        fields,
        tenant=tenant,
        lane=lane,
        default_lane=default_lane,
        catalog=catalog,
        timeout_s=timeout_s,
        text=True,
    )


def _prompt(prompt: object) -> str:
    """The one prompt of a body: a string, or a list of one string."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise LlmqError(ErrorCode.INVALID_REQUEST, "prompt must not be empty", param="prompt")
        if len(prompt) > MAX_CONTENT_CHARS:
            why = f"the prompt holds {len(prompt)} characters; at most {MAX_CONTENT_CHARS}"
            raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="prompt")
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        why = "llmq serves one prompt a request: send each on its own (n asks for several answers)"
        raise LlmqError(ErrorCode.UNSUPPORTED, why)
    if isinstance(prompt, list):
        raise LlmqError(ErrorCode.UNSUPPORTED, "prompts of token ids are not served; send text")
    raise LlmqError(ErrorCode.INVALID_REQUEST, "prompt must be a string", param="prompt")


def text_completion_of(results: list[InferenceResult]) -> dict[str, Any]:
    """The `text_completion` of a call's answers: the chat completion's usage and llmq's
    extras, each choice's text and log-probabilities in the text completions' shape."""
    body = completion_of(results)
    choices = [
        {
            "index": index,
            "text": choice["message"]["content"],
            "logprobs": _logprobs_of(result),
            "finish_reason": choice["finish_reason"],
        }
        for index, (result, choice) in enumerate(zip(results, body["choices"], strict=True))
    ]
    return {
        **body,
        "id": f"cmpl-{results[0].correlation_id}",
        "object": "text_completion",
        "choices": choices,
    }


def _logprobs_of(result: InferenceResult) -> dict[str, Any] | None:
    logprobs = None if result.response is None else result.response.choices[0].logprobs
    return None if logprobs is None else text_logprobs(logprobs.content)


def text_logprobs(tokens: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The text completions' `logprobs`: the tokens, theirs, at each position the sampled
    token and the likeliest (as OpenAI and vLLM's server give them: a sampled token outside
    the top ones is there too), and where each starts in the answer's text (from `offset`)."""
    starts = []
    for token in tokens:
        starts.append(offset)
        offset += len(token.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [
            {t.token: t.logprob, **{top.token: top.logprob for top in t.top_logprobs}}
            for t in tokens
        ],
        "text_offset": starts,
    }


@dataclass(frozen=True)
class TextChunks(Chunks):
    """The chunks of a streamed text completion: no role chunk; each choice's text, then
    its finish reason, then (include_usage) the usage with no choices."""

    OBJECT: ClassVar[str] = "text_completion"
    ID_PREFIX: ClassVar[str] = "cmpl-"

    def role(self, index: int = 0) -> dict[str, Any] | None:
        return None

    def _choice(
        self,
        index: int,
        text: str | None,
        finish_reason: str | None,
        logprobs: list[TokenLogprob] | None,
        offset: int,
    ) -> dict[str, Any]:
        return {
            "index": index,
            "text": text or "",
            "logprobs": None if logprobs is None else text_logprobs(logprobs, offset),
            "finish_reason": finish_reason,
        }
