"""The Batch API's pure parts: reading input lines, what a reply makes of its line, the
objects OpenAI's SDK reads, and validation's verdict on a file."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from openai.types import Batch, Completion, FileObject
from openai.types.responses import Response

from gateway.batch import lines
from gateway.batch.collector import MAX_LINE_ATTEMPTS, outcome, parse_line_id
from gateway.batch.lines import (
    RESPONSES_ENDPOINT,
    TEXT_ENDPOINT,
    error_line,
    failed_line,
    read_line,
)
from gateway.batch.objects import batch_object, file_object
from gateway.batch.runner import line_id
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.names import BATCH_RESULTS
from schemas.request import InferenceRequest
from schemas.result import (
    ChatCompletion,
    Choice,
    ErrorInfo,
    InferenceResult,
    PromptTokensDetails,
    Usage,
)

CATALOG = Catalog.builtin()
MODEL = CATALOG.default


def _raw(**fields: Any) -> bytes:
    line = {
        "custom_id": "q1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
    }
    return json.dumps({**line, **fields}).encode()


def _read(raw: bytes) -> InferenceRequest:
    deadline = time.time() + 3600
    line = read_line(
        raw, tenant="acme", catalog=CATALOG, deadline=deadline, correlation_id="batch_ab.7.0"
    )
    assert line.custom_id == "q1"
    return line.request


def _refused(raw: bytes) -> LlmqError:
    with pytest.raises(LlmqError) as caught:
        _read(raw)
    return caught.value


def test_a_line_is_a_batch_lane_request_answered_on_the_batch_topic() -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "lane": "interactive", "max_tokens": 5}
    request = _read(_raw(body=body))
    assert (request.correlation_id, request.tenant, request.model) == (
        "batch_ab.7.0",
        "acme",
        MODEL,
    )
    assert (request.lane, request.reply_to, request.body.max_tokens) == (
        Lane.BATCH,
        BATCH_RESULTS,
        5,
    )
    assert request.deadline is not None and request.deadline > time.time() + 3500


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"{nope", ErrorCode.INVALID_JSON, "not JSON"),
        (b"[1]", ErrorCode.INVALID_REQUEST, "JSON object"),
        (_raw(custom_id=""), ErrorCode.INVALID_REQUEST, "custom_id"),
        (_raw(custom_id=7), ErrorCode.INVALID_REQUEST, "custom_id"),
        (_raw(custom_id="x" * 513), ErrorCode.INVALID_REQUEST, "custom_id"),
        (_raw(method="GET"), ErrorCode.INVALID_REQUEST, "POST"),
        (_raw(url="/v1/embeddings"), ErrorCode.UNSUPPORTED, "/v1/chat/completions"),
        (_raw(url="/v1/completions"), ErrorCode.UNSUPPORTED, "the endpoint of the batch"),
        (_raw(body={"messages": []}), ErrorCode.INVALID_REQUEST, "messages"),
        (_raw(body="text"), ErrorCode.INVALID_REQUEST, "JSON object"),
        (
            _raw(body={"model": "nope", "messages": [{"role": "user", "content": "Hi"}]}),
            ErrorCode.UNKNOWN_MODEL,
            "nope",
        ),
        (
            _raw(body={"messages": [{"role": "user", "content": "Hi"}], "stream": True}),
            ErrorCode.INVALID_REQUEST,
            "streamed",
        ),
        (
            _raw(body={"messages": [{"role": "user", "content": "Hi"}], "n": 2}),
            ErrorCode.UNSUPPORTED,
            "n must be 1",
        ),
        (
            _raw(body={"messages": [{"role": "user", "content": "\N{GRINNING FACE}" * 150_000}]}),
            ErrorCode.PROMPT_TOO_LARGE,
            "the limit is 450000",
        ),
    ],
)
def test_a_bad_line_says_what_is_wrong(raw: bytes, code: ErrorCode, words: str) -> None:
    refused = _refused(raw)
    assert refused.code is code and words in refused.message


def test_a_text_batchs_lines_are_raw_prompts_and_its_answers_text_completions() -> None:
    text = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "lane": "interactive"}
    raw = _raw(url=TEXT_ENDPOINT, body=text)
    line = read_line(
        raw,
        tenant="acme",
        catalog=CATALOG,
        deadline=time.time() + 60,
        correlation_id="batch_ab.7.0",
        endpoint=TEXT_ENDPOINT,
    )
    body = line.request.body
    assert (body.raw_prompt, body.messages[0].content, line.request.lane) == (
        True,
        "Once upon a time",
        Lane.BATCH,
    )
    # One endpoint a batch: a chat line in a text batch is refused, and the other way round.
    with pytest.raises(LlmqError, match="url must be /v1/chat/completions, the endpoint"):
        _read(raw)
    made = outcome(3, 0, "q3", _answer(), time.time() + 60, endpoint=TEXT_ENDPOINT)
    answer = made.body["response"]["body"]
    assert (answer["object"], answer["choices"][0]["text"]) == ("text_completion", "Blue.")
    assert Completion.model_validate(answer).usage is not None


def test_a_line_its_reader_fails_on_is_that_lines_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Validation caught LlmqError only: an IndexError of one line failed the step again on
    each try, and the batch sat validating until it expired."""

    def broken(*_: Any, **__: Any) -> Any:
        raise IndexError("list index out of range")

    monkeypatch.setitem(lines.READERS, RESPONSES_ENDPOINT, broken)
    raw = _raw(url=RESPONSES_ENDPOINT, body={"model": MODEL, "input": "Hi"})
    with caplog.at_level(logging.ERROR, "gateway.batch.lines"), pytest.raises(LlmqError) as caught:
        read_line(
            raw,
            tenant="acme",
            catalog=CATALOG,
            deadline=time.time() + 60,
            correlation_id="batch_ab.4.0",
            endpoint=RESPONSES_ENDPOINT,
        )
    assert (caught.value.code, caught.value.message) == (
        ErrorCode.INVALID_REQUEST,
        lines.UNREADABLE,
    )
    [record] = caplog.records
    assert "batch_ab.4.0" in record.getMessage() and record.exc_info is not None
    assert record.exc_info[0] is IndexError


def test_a_responses_batchs_lines_echo_what_they_asked_and_stand_alone() -> None:
    asked: dict[str, Any] = {"model": MODEL, "input": "Name a colour.", "store": True}
    asked.update(instructions="Be brief.", max_output_tokens=4, metadata={"k": "v"})

    def line(**extra: Any) -> Any:
        return read_line(
            _raw(url=RESPONSES_ENDPOINT, body={**asked, **extra}),
            tenant="acme",
            catalog=CATALOG,
            deadline=time.time() + 60,
            correlation_id="batch_ab.3.0",
            endpoint=RESPONSES_ENDPOINT,
        )

    read = line()
    assert [m.role for m in read.request.body.messages] == ["system", "user"]
    assert read.asked is not None and read.asked["instructions"] == "Be brief."
    with pytest.raises(LlmqError, match="previous_response_id is not served in a batch"):
        line(previous_response_id="resp_1")
    made = outcome(
        3, 0, "q3", _answer(), time.time() + 60, endpoint=RESPONSES_ENDPOINT, asked=read.asked
    )
    body = made.body["response"]["body"]
    answer = Response.model_validate(body)
    assert (answer.output_text, answer.instructions, answer.metadata) == (
        "Blue.",
        "Be brief.",
        {"k": "v"},
    )
    assert (answer.max_output_tokens, body["store"]) == (4, False)  # a batch's are not stored
    assert answer.usage is not None and made.tokens[:2] == (11, answer.usage.output_tokens)
    assert answer.id == "resp_batch_ab.3.0"
    # A line with function tools echoes them; one recorded before tools came echoes none.
    called = line(tools=[{"type": "function", "name": "ping"}], tool_choice="required")
    assert called.request.body.calls_tools and called.asked is not None
    for recorded, tools in ((called.asked, ["ping"]), (None, [])):
        made = outcome(
            3, 0, "q3", _answer(), time.time() + 60, endpoint=RESPONSES_ENDPOINT, asked=recorded
        )
        echoed = Response.model_validate(made.body["response"]["body"])
        assert [t.name for t in echoed.tools] == tools  # type: ignore[union-attr]


def test_line_ids_go_both_ways_and_other_ids_are_not_lines() -> None:
    assert parse_line_id(line_id("batch_0af3", 12, 3)) == ("batch_0af3", 12, 3)
    for other in ("abc", "batch_x", "batch_x.1", "batch_x.a.0", "req.1.2", "batch_x.1.-1"):
        assert parse_line_id(other) is None


def _answer(correlation_id: str = "batch_ab.3.0") -> InferenceResult:
    completion = ChatCompletion(
        id="c",
        created=1,
        model=MODEL,
        choices=[Choice(message={"role": "assistant", "content": "Blue."}, finish_reason="stop")],
        usage=Usage(
            prompt_tokens=11,
            completion_tokens=2,
            total_tokens=13,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=8),
        ),
    )
    return InferenceResult(
        correlation_id=correlation_id, tenant="acme", status="ok", response=completion
    )


def _error(code: ErrorCode, retry_after_s: float | None = None) -> InferenceResult:
    info = ErrorInfo(code=code, message="no", retriable=code.retriable, retry_after_s=retry_after_s)
    return InferenceResult(correlation_id="batch_ab.3.0", tenant="acme", status="error", error=info)


def test_an_answer_is_an_output_line_with_its_tokens() -> None:
    made = outcome(3, 0, "q3", _answer(), time.time() + 60)
    assert (made.kind, made.line, made.attempt, made.tokens) == ("output", 3, 0, (11, 2, 8))
    body = made.body
    assert (body["custom_id"], body["error"], body["response"]["status_code"]) == ("q3", None, 200)
    assert body["response"]["body"]["choices"][0]["message"]["content"] == "Blue."
    assert body["id"] == "batch_req_batch_ab.3.0"


def test_an_error_reply_is_an_error_line_with_its_http_status() -> None:
    made = outcome(3, 0, "q3", _error(ErrorCode.PROMPT_TOO_LARGE), time.time() + 60)
    assert made.kind == "error"
    response = made.body["response"]
    assert response["status_code"] == 400
    assert response["body"]["error"]["code"] == "context_length_exceeded"  # OpenAI's


def test_a_reply_with_neither_an_answer_nor_an_error_is_an_error_line() -> None:
    """Written by another producer: raising on it would stop the collector for good."""
    odd = InferenceResult(correlation_id="batch_ab.3.0", tenant="acme", status="ok")
    made = outcome(3, 0, "q3", odd, time.time() + 60)
    assert (made.kind, made.line, made.attempt) == ("error", 3, 0)
    assert made.body["error"] is None
    assert made.body["response"]["status_code"] == 500
    assert made.body["response"]["body"]["error"]["code"] == "internal_error"
    assert made.body["response"]["body"]["error"]["message"] == (
        "the line's reply could not be written: it carried neither an answer nor an error"
    )
    assert made.body["id"] == "batch_req_batch_ab.3.0"


def test_a_refusal_for_a_while_is_retried_if_the_batch_has_the_time() -> None:
    now = time.time()
    made = outcome(3, 1, "q3", _error(ErrorCode.RATE_LIMITED, 20), now + 60)
    assert (made.kind, made.attempt) == ("retry", 1)
    assert now + 19 < made.retry_at < now + 22
    held = outcome(3, 1, "q3", _error(ErrorCode.BUDGET_EXCEEDED, 5), now + 60)
    assert held.kind == "retry"
    late = outcome(3, 1, "q3", _error(ErrorCode.RATE_LIMITED, 90), now + 60)
    assert late.kind == "error"
    assert late.body["response"]["status_code"] == 429
    waits = outcome(3, MAX_LINE_ATTEMPTS + 5, "q3", _error(ErrorCode.RATE_LIMITED, 20), now + 60)
    assert waits.kind == "retry"  # a refusal for a while waits as long as the batch has


def test_an_engine_failure_that_says_when_is_retried_a_few_times_only() -> None:
    """An open circuit's or a remote server's wait (its final failure keeps it): the line
    was sent again every cooldown until its batch expired, a day of an engine down."""
    now = time.time()
    tried = [
        outcome(3, attempt, "q3", _error(ErrorCode.ENGINE_ERROR, 30), now + 3600).kind
        for attempt in range(MAX_LINE_ATTEMPTS)
    ]
    assert tried == ["retry"] * (MAX_LINE_ATTEMPTS - 1) + ["error"]


def test_an_error_line_without_a_reply_has_openais_shape() -> None:
    """A line the batch ended (expired, cancelled): no response, OpenAI's error of code and
    message."""
    line = error_line("q3", line_id("batch_ab", 3, 0), "batch_expired", "the batch expired")
    assert line == {
        "id": f"batch_req_{line_id('batch_ab', 3, 0)}",
        "custom_id": "q3",
        "response": None,
        "error": {"code": "batch_expired", "message": "the batch expired"},
    }


def test_a_line_refused_as_it_was_sent_is_an_error_reply() -> None:
    """A request's failure the door finds (Kafka refusing the line for its size): OpenAI's
    shape of one, as a worker's error reply, with OpenAI's code; no batch-level error."""
    attempt = line_id("batch_ab", 4, 1)
    refused = failed_line("q4", attempt, ErrorCode.PROMPT_TOO_LARGE, "too large for llmq")
    assert refused == {
        "id": f"batch_req_{attempt}",
        "custom_id": "q4",
        "response": {
            "status_code": 400,
            "request_id": f"req_{attempt}",
            "body": {
                "error": {
                    "message": "too large for llmq",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "context_length_exceeded",
                }
            },
        },
        "error": None,
    }


BATCH = {
    "id": "batch_ab",
    "tenant": "acme",
    "endpoint": "/v1/chat/completions",
    "input_file_id": "file-1",
    "completion_window": "24h",
    "status": "in_progress",
    "created_at": "1000",
    "expires_at": "87400.5",
    "in_progress_at": "1001",
    "total": "10",
    "completed": "4",
    "failed": "1",
    "input_tokens": "40",
    "output_tokens": "8",
    "metadata": '{"job": "x"}',
    "model": MODEL,
}


def test_a_batch_reads_as_the_sdks_batch() -> None:
    batch = Batch.model_validate(batch_object(BATCH))
    assert (batch.status, batch.expires_at, batch.in_progress_at) == ("in_progress", 87400, 1001)
    assert batch.completed_at is None and batch.errors is None
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (10, 4)
    assert batch.usage is not None and batch.usage.total_tokens == 48
    assert batch.metadata == {"job": "x"}
    errors = json.dumps([{"code": "invalid_json", "message": "m", "param": None, "line": 3}])
    failed = Batch.model_validate(batch_object({**BATCH, "status": "failed", "errors": errors}))
    assert failed.errors is not None and failed.errors.data is not None
    assert failed.errors.data[0].line == 3


def test_a_file_reads_as_the_sdks_file() -> None:
    fields = {"id": "file-1", "bytes": "12", "created_at": "5", "filename": "a.jsonl"}
    found = FileObject.model_validate(file_object({**fields, "purpose": "batch"}))
    assert (found.id, found.bytes, found.purpose, found.status) == (
        "file-1",
        12,
        "batch",
        "processed",
    )
    assert found.expires_at is None  # a file kept before llmq noted when it expires
    kept = file_object({**fields, "purpose": "batch", "expires_at": "2592005"})
    assert FileObject.model_validate(kept).expires_at == 2592005
