"""When a failed generation is tried again, and how its final failure reads."""

from __future__ import annotations

import pytest

from schemas.errors import ErrorCode
from schemas.names import COMPLETIONS, DLQ, HEADER_REASON, HEADER_SOURCE_TOPIC
from schemas.retry import RetryPolicy
from schemas.work import Completion, WorkItem
from streams.retries import final_failure, retry_of
from tests.unit.stages import Pipeline, admitted, completion, raw_request, result_of

NOW = 1_000_000.0
POLICY = RetryPolicy(max_attempts=3, base_delay_s=1.0, budget_s=300.0, uniform=lambda: 0.0)


def _failed(code: ErrorCode = ErrorCode.ENGINE_ERROR, **work: object) -> Completion:
    item = admitted(raw_request(temperature=0)).model_copy(update={"admitted_at": NOW, **work})
    return Completion.model_validate_json(completion(item, None, code))


def test_a_retriable_failure_is_tried_again_after_a_doubling_backoff() -> None:
    first = retry_of(_failed(), POLICY, now=NOW)
    assert isinstance(first, WorkItem)
    assert (first.attempt, first.not_before) == (2, NOW + 0.5)  # 1 s, jittered down to half
    second = retry_of(_failed(attempt=2), POLICY, now=NOW)
    assert second is not None
    assert (second.attempt, second.not_before) == (3, NOW + 1.0)


def test_no_retry_after_the_last_attempt_and_the_failure_says_how_many() -> None:
    last = _failed(attempt=3)
    assert retry_of(last, POLICY, now=NOW) is None
    error = final_failure(last)
    assert error is not None
    assert error.code is ErrorCode.ENGINE_ERROR
    assert error.message == "failed after 3 attempts: boom"
    assert error.retriable


@pytest.mark.parametrize("code", [ErrorCode.INVALID_REQUEST, ErrorCode.EXPIRED])
def test_a_failure_no_retry_can_help_is_final_at_once_and_not_dead_lettered(
    code: ErrorCode,
) -> None:
    failed = _failed(code)
    assert retry_of(failed, POLICY, now=NOW) is None
    assert final_failure(failed) is None


def test_a_failure_the_engine_already_retried_is_not_retried_again() -> None:
    failed = _failed().model_copy(update={"engine_retried": True})
    assert retry_of(failed, POLICY, now=NOW) is None
    error = final_failure(failed)
    assert error is not None
    assert error.message == "failed after 1 attempt: boom"
    assert error.retriable


def test_no_retry_that_could_not_start_before_the_deadline() -> None:
    failed = _failed()
    request = failed.work.request.model_copy(update={"deadline": NOW + 0.4})
    late = failed.model_copy(update={"work": failed.work.model_copy(update={"request": request})})
    assert retry_of(late, POLICY, now=NOW) is None


def test_no_retry_past_the_budget_counted_from_admission() -> None:
    assert retry_of(_failed(), POLICY, now=NOW + 299.9) is None


def test_an_answer_is_neither_retried_nor_a_failure() -> None:
    item = admitted(raw_request(temperature=0))
    answered = Completion.model_validate_json(completion(item, "Hello!"))
    assert retry_of(answered, POLICY) is None
    assert final_failure(answered) is None


def test_the_stage_retries_on_the_same_model_then_dead_letters_and_answers() -> None:
    harness = Pipeline()
    harness.on_request(None, raw_request(temperature=0))
    [sent] = harness.send.sent
    work = WorkItem.model_validate_json(sent.value)
    for attempt in (2, 3):
        harness.send.sent.clear()
        harness.on_completion(completion(work, None))
        [sent] = harness.send.sent
        assert sent.topic == "llmq.work.smollm2-135m.interactive"
        work = WorkItem.model_validate_json(sent.value)
        assert work.attempt == attempt
    harness.send.sent.clear()
    harness.on_completion(completion(work, None))
    dead, reply = harness.send.sent
    assert dead.topic == DLQ
    assert dead.headers is not None
    assert dead.headers[HEADER_REASON] == b"failed after 3 attempts: boom"
    assert dead.headers[HEADER_SOURCE_TOPIC] == COMPLETIONS.encode()
    result = result_of(reply)
    assert result.error is not None
    assert result.error.message == "failed after 3 attempts: boom"
