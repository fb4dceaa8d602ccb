"""The JSON Schemas in docs/schemas/ are the models' own (`python -m schemas.published`
writes them), README's record fits the request's, and records llmq writes fit theirs:
the contract an app in another language codes against."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from schemas.errors import ErrorCode, LlmqError
from schemas.published import DOCS, rendered
from schemas.request import ChatMessage
from schemas.result import CacheStatus, TokenLogprob
from schemas.stream import TokenDelta
from schemas.tools import FunctionCall, ToolCall
from streams import replies
from tests.unit.stages import admitted, answer

pytestmark = pytest.mark.timeout(60)

README = Path(__file__).resolve().parents[2] / "README.md"


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((DOCS / f"{name}.json").read_text(encoding="utf-8")))


def test_the_published_schemas_are_the_models_own() -> None:
    """Run `python -m schemas.published` after changing a record's model."""
    on_disk = {path.name: path.read_text(encoding="utf-8") for path in DOCS.glob("*.json")}
    assert on_disk == rendered()


def _readme_record() -> dict[str, Any]:
    text = README.read_text(encoding="utf-8")
    after = text.index("Any Kafka client (`examples/raw_kafka.sh` uses kcat).")
    block = re.search(r"```json\n(.*?)```", text[after:], re.DOTALL)
    assert block is not None
    found: dict[str, Any] = json.loads(block.group(1))
    return found


def test_the_readmes_record_fits_the_request_schema_and_a_stray_field_does_not() -> None:
    record = _readme_record()
    requests = _validator("inference-request")
    requests.validate(record)
    admitted(json.dumps(record).encode())  # and the stream processor takes it
    assert not requests.is_valid(record | {"priority": "high"})  # unknown fields: refused
    assert not requests.is_valid({k: v for k, v in record.items() if k != "body"})


def test_the_records_llmq_writes_fit_their_schemas() -> None:
    work = admitted(json.dumps(_readme_record()).encode())
    results = _validator("inference-result")
    answered = replies.from_cache(work, answer("Hi"), CacheStatus.EXACT)
    refused = replies.from_error(LlmqError(ErrorCode.RATE_LIMITED, "slow down", 2.0), "c", "t")
    call = ToolCall(id="call_1", type="function", function=FunctionCall(name="f", arguments="{}"))
    [choice] = answer("").choices
    message = ChatMessage(role="assistant", content="", tool_calls=[call])
    calls = answer("").model_copy(
        update={"choices": [choice.model_copy(update={"message": message})]}
    )
    called = replies.from_cache(work, calls, CacheStatus.EXACT)
    for result in (answered, refused, called):
        results.validate(json.loads(result.model_dump_json()))
    # An answer's message leaves out what it lacks (OpenAI's objects do), and is checked.
    message = json.loads(answered.model_dump_json())["response"]["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hi"}
    wrong = json.loads(answered.model_dump_json())
    wrong["response"]["choices"][0]["message"]["role"] = "robot"
    assert not results.is_valid(wrong)
    deltas = _validator("token-delta")
    piece = TokenDelta(correlation_id="c", tenant="t", generation="g", seq=0, text="Hi")
    logprob = TokenLogprob(token="Hi", logprob=-0.1)
    last = piece.model_copy(update={"seq": 1, "finish_reason": "stop", "logprobs": [logprob]})
    for delta in (piece, last):
        deltas.validate(json.loads(delta.model_dump_json()))
    without = json.loads(piece.model_dump_json())
    del without["finish_reason"]  # always written, null when it has no value
    assert not deltas.is_valid(without)
