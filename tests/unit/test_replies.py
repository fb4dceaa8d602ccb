"""The one InferenceResult each request ends in: fresh, cached, or an error."""

from __future__ import annotations

import pytest

from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatMessage, InferenceRequest
from schemas.result import (
    CacheStatus,
    ChatCompletion,
    Choice,
    ErrorInfo,
    Timings,
    Usage,
)
from schemas.route import Route
from schemas.work import Completion, WorkItem
from streams.coalesce import Waiter
from streams.replies import for_follower, from_cache, from_completion, from_error

CREATED_AT = 1_000.0


def _work(correlation_id: str = "req-1") -> WorkItem:
    request = InferenceRequest.model_validate(
        {
            "correlation_id": correlation_id,
            "tenant": "acme",
            "created_at": CREATED_AT,
            "body": {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0},
        }
    )
    return WorkItem(
        request=request,
        model="smollm2-135m",
        fingerprint="f" * 64,
        route=Route(requested="smollm2-135m", chain=["smollm2-135m"]),
        admitted_at=1_000.5,
    )


def _answer(text: str = "Hello!", correlation_id: str = "req-0") -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{correlation_id}",
        created=900,
        model="smollm2-135m",
        choices=[Choice(message=ChatMessage(role="assistant", content=text), finish_reason="stop")],
        usage=Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7),
    )


WORKER_TIMINGS = Timings(queue_ms=500.0, ttft_ms=20.0, engine_ms=80.0)


def test_from_completion_carries_the_answer_and_the_timings() -> None:
    completion = Completion(
        work=_work(), response=_answer(), timings=WORKER_TIMINGS, worker="w1", finished_at=1_001.0
    )
    result = from_completion(completion, now=1_002.0)
    assert result.correlation_id == "req-1"
    assert result.tenant == "acme"
    assert result.status == "ok"
    assert result.model_used == "smollm2-135m"
    assert result.cache is CacheStatus.NONE
    assert result.response == _answer()
    assert result.text == "Hello!"
    assert result.error is None
    assert result.finished_at == 1_002.0
    assert result.timings.model_dump(exclude={"total_ms"}) == WORKER_TIMINGS.model_dump(
        exclude={"total_ms"}
    )
    assert result.timings.total_ms == pytest.approx(2_000.0)


def test_from_completion_of_a_failure_is_an_error_result() -> None:
    error = ErrorInfo.from_error(LlmqError(ErrorCode.ENGINE_ERROR, "engine fell over"))
    completion = Completion(work=_work(), error=error, timings=WORKER_TIMINGS, worker="w1")
    result = from_completion(completion, now=1_000.25)
    assert result.status == "error"
    assert result.error == error
    assert result.response is None
    assert result.text is None
    assert result.timings.total_ms == pytest.approx(250.0)


def test_total_ms_is_never_negative() -> None:
    completion = Completion(work=_work(), response=_answer(), timings=WORKER_TIMINGS, worker="w")
    assert from_completion(completion, now=CREATED_AT - 5).timings.total_ms == 0.0


def test_from_cache_reissues_the_answer_under_this_requests_id() -> None:
    cached = _answer("From the cache", correlation_id="someone-else")
    result = from_cache(_work("req-2"), cached, now=1_000.01)
    assert result.correlation_id == "req-2"
    assert result.tenant == "acme"
    assert result.status == "ok"
    assert result.cache is CacheStatus.EXACT
    assert result.model_used == "smollm2-135m"
    assert result.response is not None
    assert result.response.id == "chatcmpl-req-2"
    assert result.response.created == 1_000
    assert result.response.choices == cached.choices
    assert result.response.usage == cached.usage
    assert result.text == "From the cache"
    assert result.timings.total_ms == pytest.approx(10.0)
    assert result.timings.queue_ms is None
    assert result.timings.engine_ms is None
    assert result.finished_at == 1_000.01


def test_from_error_shape() -> None:
    error = LlmqError(ErrorCode.UNKNOWN_MODEL, "unknown model 'x'")
    result = from_error(error, "req-3", "acme", created_at=CREATED_AT, now=1_000.1)
    assert result.status == "error"
    assert (result.correlation_id, result.tenant) == ("req-3", "acme")
    assert result.error == ErrorInfo(
        code=ErrorCode.UNKNOWN_MODEL, message="unknown model 'x'", retriable=False
    )
    assert result.response is None
    assert result.model_used is None
    assert result.cache is CacheStatus.NONE
    assert result.timings.total_ms == pytest.approx(100.0)


def test_from_error_without_a_readable_envelope() -> None:
    result = from_error(LlmqError(ErrorCode.INVALID_JSON, "not JSON"), None, None, now=5.0)
    assert result.correlation_id is None
    assert result.tenant is None
    assert result.timings.total_ms is None
    assert result.finished_at == 5.0
    assert result.error is not None
    assert result.error.code is ErrorCode.INVALID_JSON


def _waiter(deadline: float | None = None) -> Waiter:
    return Waiter(
        correlation_id="req-9",
        tenant="acme",
        reply_to="app.replies",
        created_at=CREATED_AT,
        deadline=deadline,
    )


@pytest.mark.parametrize(
    ("leader", "follower"),
    [
        (CacheStatus.NONE, CacheStatus.COALESCED),
        (CacheStatus.EXACT, CacheStatus.EXACT),
        (CacheStatus.SEMANTIC, CacheStatus.SEMANTIC),
    ],
)
def test_a_follower_is_told_how_its_leaders_answer_was_had(
    leader: CacheStatus, follower: CacheStatus
) -> None:
    """A cache's answer stays one (a semantic one may answer a paraphrase); a generation's
    is coalesced."""
    generated = Completion(work=_work(), response=_answer(), timings=WORKER_TIMINGS, worker="w")
    answered = (
        from_completion(generated, now=1_000.5)
        if leader is CacheStatus.NONE
        else from_cache(_work(), _answer(), leader, now=1_000.5)
    )
    result = for_follower(answered, _waiter(), now=1_001.0)
    assert (result.correlation_id, result.cache, result.text) == ("req-9", follower, "Hello!")
    assert result.cost_usd == 0.0


def test_a_follower_past_its_deadline_is_told_it_expired() -> None:
    generated = Completion(work=_work(), response=_answer(), timings=WORKER_TIMINGS, worker="w")
    leader = from_completion(generated, now=1_000.5)
    assert for_follower(leader, _waiter(deadline=1_002.0), now=1_001.0).status == "ok"
    result = for_follower(leader, _waiter(deadline=1_001.0), now=1_001.0)
    assert (result.correlation_id, result.tenant, result.status) == ("req-9", "acme", "error")
    assert result.error is not None and result.error.code is ErrorCode.EXPIRED
    assert result.response is None
    assert result.timings.total_ms == pytest.approx(1_000.0)
