"""Answers the prompt's bounds do not hold: a text past a message's 200,000 characters (a
model repeating an 80-character token) and log-probabilities a structured output's grammar
masks (-inf) are published as records every reader reads back."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from schemas.request import MAX_CONTENT_CHARS
from schemas.result import InferenceResult
from schemas.stream import TokenDelta
from tests.unit.worker_fakes import FakeEngine, serve_one, work

with warnings.catch_warnings():  # vLLM warns as it loads
    warnings.simplefilter("ignore", DeprecationWarning)
    from vllm.logprobs import Logprob

    from workers.vllm_engine import LEAST_LOGPROB, _logprobs

pytestmark = pytest.mark.timeout(60)


def test_an_answer_longer_than_a_prompt_may_be_is_published_not_fatal() -> None:
    """It raised in the worker, which exited: every generation beside it was lost, and the
    record killed each worker that took it again until it was dead-lettered (crash_loop)."""
    text = "#" * 70_000  # three pieces: 210,000 characters
    [completion] = serve_one(work(), FakeEngine(text=text)).completions()
    assert completion.error is None and completion.response is not None
    content = completion.response.choices[0].message.content
    assert len(content) == 3 * len(text) > MAX_CONTENT_CHARS
    result = {"correlation_id": "c1", "tenant": "t", "status": "ok"}
    read = InferenceResult.model_validate({**result, "response": completion.response})
    assert read.text == content


def test_a_masked_tokens_log_probability_is_one_json_carries() -> None:
    """vLLM gives a token its grammar masks -inf (a JSON answer, a forced tool call): JSON
    wrote it as null, and the completion, its pieces and its result were unreadable."""
    masked = {
        5: Logprob(logprob=-0.1, rank=1, decoded_token="{"),
        6: Logprob(logprob=-math.inf, rank=2, decoded_token="x"),
        7: Logprob(logprob=math.nan, rank=3, decoded_token="y"),
    }
    [token] = _logprobs([5], [masked], top=3)
    assert [t.logprob for t in token.top_logprobs] == [-0.1, LEAST_LOGPROB, LEAST_LOGPROB]
    delta = TokenDelta(correlation_id="c1", tenant="t", text="{", logprobs=[token])
    assert TokenDelta.model_validate_json(delta.model_dump_json()) == delta
    assert json.loads(delta.model_dump_json())["logprobs"][0]["top_logprobs"][1]["logprob"] < 0
