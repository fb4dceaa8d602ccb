"""When a failed generation is tried again, and how its final failure reads."""

from __future__ import annotations

import json
import random
import time

import pytest

from schemas.errors import ErrorCode, LlmqError
from schemas.names import COMPLETIONS, DLQ, HEADER_REASON, HEADER_SOURCE_TOPIC
from schemas.result import ErrorInfo, Timings
from schemas.retry import RetryPolicy
from schemas.work import Completion, WorkItem
from streams.retries import final_failure, retry_of
from tests.unit.clock import Clock
from tests.unit.stages import TIERED, Pipeline, admitted, completion, raw_request, result_of
from workers.breaker import CircuitBreaker
from workers.inflight import InFlight

NOW = 1_000_000.0
POLICY = RetryPolicy(max_attempts=3, base_delay_s=1.0, budget_s=300.0, uniform=lambda: 0.0)


RAN = Timings(queue_ms=0.0, engine_ms=1000.0)
"""An attempt that started as soon as it was sent."""


def _failed(code: ErrorCode = ErrorCode.ENGINE_ERROR, **work: object) -> Completion:
    item = admitted(raw_request(temperature=0)).model_copy(update={"admitted_at": NOW, **work})
    return Completion.model_validate_json(completion(item, None, code))


def _refused(breaker: CircuitBreaker, cid: str = "req-1") -> Completion:
    """A generation the breaker refused (no call made), as its worker reports it."""
    with pytest.raises(LlmqError) as caught:
        breaker.acquire()
    work = admitted(raw_request(cid=cid, temperature=0))
    error = ErrorInfo.from_error(caught.value)
    return Completion(
        work=work, error=error, engine_retried=caught.value.retried, timings=Timings(), worker="w1"
    )


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


def test_the_budget_counts_from_the_first_failure_not_from_admission() -> None:
    """A batch-lane item may queue for hours: its first failure, at once, is retried, and
    its retry carries when that was, which its later retries count from."""
    queued = _failed(admitted_at=NOW - 600)
    first = retry_of(queued, POLICY, now=NOW)
    assert first is not None and first.first_failed_at == NOW
    again = _failed(attempt=2, first_failed_at=NOW - 290).model_copy(update={"timings": RAN})
    second = retry_of(again, POLICY, now=NOW)
    assert second is not None and second.first_failed_at == NOW - 290, "not stamped anew"
    spent = _failed(attempt=2, first_failed_at=NOW - POLICY.budget_s)
    assert retry_of(spent, POLICY, now=NOW) is None


def test_the_time_a_retry_queues_is_not_spent_from_its_budget() -> None:
    """A batch-lane retry waits behind the lane's backlog, hours perhaps: only the time from
    the first failure less each retry's wait in its queue counts (WorkItem.first_failed_at)."""
    first = retry_of(_failed(), POLICY, now=NOW)
    assert first is not None and first.first_failed_at == NOW
    two_hours = Timings(queue_ms=7_200_000.0, engine_ms=1000.0)
    later = Completion.model_validate_json(completion(first, None))
    second = retry_of(later.model_copy(update={"timings": two_hours}), POLICY, now=NOW + 7201)
    assert second is not None and second.attempt == 3
    assert second.first_failed_at == NOW + 7200, "its clock moved on by the wait"
    slow = Timings(queue_ms=7_200_000.0 - POLICY.budget_s * 1000, engine_ms=1000.0)
    assert retry_of(later.model_copy(update={"timings": slow}), POLICY, now=NOW + 7201) is None


def test_the_first_failure_is_written_only_once_it_happened() -> None:
    """None until then, and read back as written, by a worker that echoes it."""
    work = admitted(raw_request(temperature=0))
    assert work.first_failed_at is None
    retry = retry_of(_failed(), POLICY, now=NOW)
    assert retry is not None
    assert json.loads(retry.model_dump_json())["first_failed_at"] == NOW
    assert WorkItem.model_validate_json(retry.model_dump_json()) == retry


def test_the_final_failure_keeps_when_to_try_again() -> None:
    """The batch collector reschedules a line by it; the door answers Retry-After with it."""
    last = _failed(attempt=3)
    error = ErrorInfo(
        code=ErrorCode.ENGINE_ERROR, message="open", retriable=True, retry_after_s=29.3
    )
    failure = final_failure(last.model_copy(update={"error": error}))
    assert failure is not None and failure.retry_after_s == 29.3
    harness = Pipeline()
    harness.on_request(None, raw_request(cid="x", temperature=0))
    [sent] = harness.send.sent
    harness.send.sent.clear()
    refused = LlmqError(ErrorCode.ENGINE_ERROR, "circuit open", retry_after_s=29.3, retried=True)
    state = InFlight.from_work(WorkItem.model_validate_json(sent.value), "x@1")
    harness.on_completion(state.failure(refused, "w1", time.time()).model_dump_json().encode())
    dead, reply = harness.send.sent
    assert dead.topic == DLQ
    result = result_of(reply)
    assert result.error is not None and result.error.retry_after_s == 29.3


def test_a_queued_batch_item_that_meets_an_open_circuit_is_retried_after_it() -> None:
    """Not dead-lettered at its first attempt: its ten minutes in the batch lane are not
    spent from the retry budget, and no call was made for it."""
    breaker = CircuitBreaker("m", failure_threshold=1, cooldown_s=30.0)
    breaker.failure("HTTP 503")
    harness = Pipeline()
    data = json.loads(raw_request(cid="b-1", temperature=0))
    harness.on_request(None, json.dumps({**data, "lane": "batch"}).encode())
    [sent] = harness.send.sent
    harness.send.sent.clear()
    work = WorkItem.model_validate_json(sent.value)
    queued = work.model_copy(update={"admitted_at": time.time() - 600})
    refused = _refused(breaker).model_copy(update={"work": queued})
    before = time.time()
    harness.on_completion(refused.model_dump_json().encode())
    [retry] = harness.send.sent
    assert retry.topic == "llmq.work.smollm2-135m.batch"
    again = WorkItem.model_validate_json(retry.value)
    assert again.attempt == 2
    assert again.not_before is not None and again.not_before >= before + 29.0


def test_retries_around_an_open_circuit_spread_out_and_do_not_wait_out_the_probe() -> None:
    """Every request the open circuit refuses is told the same moment (its cooldown's end):
    their retries land spread after it. There one probes; the others, refused while it
    runs, try again after the probe's wait (its connect timeout's length), not a whole
    cooldown."""
    clock = Clock()
    breaker = CircuitBreaker("m", failure_threshold=1, cooldown_s=30.0, clock=clock)
    breaker.failure("HTTP 503")
    policy = RetryPolicy(
        max_attempts=3, base_delay_s=1.0, budget_s=300.0, uniform=random.Random(7).random
    )
    landings = []
    for at in (1000.5, 1003.0, 1010.0, 1020.0, 1029.0):
        clock.now = at  # the breaker's clock is the wall clock here
        retry = retry_of(_refused(breaker, f"c{at}"), policy, now=at)
        assert retry is not None and retry.not_before is not None
        landings.append(retry.not_before)
    assert all(1030.5 <= at <= 1031.0 for at in landings)  # the cooldown, then 0.5-1 s
    assert len(set(landings)) == len(landings)
    clock.now = 1030.0
    assert breaker.acquire() is True  # the probe
    retry = retry_of(_refused(breaker), policy, now=1030.0)
    assert retry is not None and retry.not_before is not None
    assert retry.not_before <= 1030.0 + 10.0 + policy.base_delay_s < 1030.0 + 30.0

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


def test_a_fallback_after_retries_starts_its_own_attempts_and_retry_budget() -> None:
    """Another model: its engine's failures are its own to retry, and to count."""
    harness = Pipeline(catalog=TIERED)
    data = json.loads(raw_request(temperature=0)) | {"model": "small"}
    harness.on_request(None, json.dumps(data).encode())
    [sent] = harness.send.sent
    harness.send.sent.clear()
    retried = WorkItem.model_validate_json(sent.value).model_copy(
        update={"attempt": 2, "first_failed_at": time.time() - 60, "not_before": time.time()}
    )
    harness.on_completion(completion(retried, None))
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.backup.interactive"
    fallback = WorkItem.model_validate_json(sent.value)
    assert (fallback.attempt, fallback.first_failed_at, fallback.not_before) == (1, None, None)
