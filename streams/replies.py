"""Building the one InferenceResult each request ends in: fresh, cached, or an error."""

from __future__ import annotations

import time
from collections.abc import Callable

from schemas.errors import ErrorCode, LlmqError
from schemas.result import CacheStatus, ChatCompletion, ErrorInfo, InferenceResult, Timings
from schemas.route import Route
from schemas.work import Completion, WorkItem
from streams.coalesce import Reply, Waiter


def _total_ms(created_at: float | None, now: float) -> float | None:
    return None if created_at is None else max(0.0, (now - created_at) * 1000)


def from_completion(completion: Completion, now: float | None = None) -> InferenceResult:
    """A worker's answer (or its error) as the app's result."""
    now = time.time() if now is None else now
    request = completion.work.request
    return InferenceResult(
        correlation_id=request.correlation_id,
        tenant=request.tenant,
        status="ok" if completion.error is None else "error",
        model_used=completion.work.model,
        route=completion.work.route,
        lane=request.lane,
        cost_usd=completion.spent_usd,
        response=completion.response,
        error=completion.error,
        timings=completion.timings.model_copy(
            update={"total_ms": _total_ms(request.created_at, now)}
        ),
        finished_at=now,
    )


def from_cache(
    work: WorkItem,
    cached: ChatCompletion,
    cache: CacheStatus = CacheStatus.EXACT,
    now: float | None = None,
) -> InferenceResult:
    """A cached answer, re-issued under this request's own id."""
    now = time.time() if now is None else now
    request = work.request
    return InferenceResult(
        correlation_id=request.correlation_id,
        tenant=request.tenant,
        status="ok",
        model_used=cached.model,
        route=work.route,
        cache=cache,
        lane=request.lane,
        cost_usd=0.0,
        response=_reissued(cached, request.correlation_id, now),
        timings=Timings(total_ms=_total_ms(request.created_at, now)),
        finished_at=now,
    )


def to_followers(leader: InferenceResult) -> Callable[[Waiter], Reply]:
    """Each waiting copy's reply: the leader's result re-issued to it, on its reply topic."""
    return lambda waiter: (waiter.reply_to, for_follower(leader, waiter))


def for_follower(
    leader: InferenceResult, waiter: Waiter, now: float | None = None
) -> InferenceResult:
    """The leader's result (answer or error), re-issued to a coalesced follower: as a cache's
    answer where a cache answered the leader, else as coalesced; `expired` where the
    follower's deadline passed while it waited, as its request promises (on the leader's
    route all the same: see `expired`)."""
    now = time.time() if now is None else now
    if waiter.deadline is not None and waiter.deadline <= now:
        return expired(waiter, now, leader.route)
    cached = leader.cache in (CacheStatus.EXACT, CacheStatus.SEMANTIC)
    response = leader.response
    return leader.model_copy(
        update={
            "correlation_id": waiter.correlation_id,
            "cache": leader.cache if cached else CacheStatus.COALESCED,
            "lane": waiter.lane,
            "cost_usd": 0.0,
            "response": None
            if response is None
            else _reissued(response, waiter.correlation_id, now),
            "timings": leader.timings.model_copy(
                update={"total_ms": _total_ms(waiter.created_at, now)}
            ),
            "finished_at": now,
        }
    )


def expired(
    waiter: Waiter, now: float | None = None, route: Route | None = None
) -> InferenceResult:
    """The reply of a follower whose deadline passed while it waited, on `route`, that of
    the generation it waited on: an A/B test counts the error in its arm, as it counts
    the answer of a follower in time."""
    why = LlmqError(ErrorCode.EXPIRED, "the deadline passed while it waited on a copy's generation")
    return from_error(
        why, waiter.correlation_id, waiter.tenant, waiter.created_at, now, route=route
    )


def _reissued(response: ChatCompletion, correlation_id: str, now: float) -> ChatCompletion:
    return response.model_copy(update={"id": f"chatcmpl-{correlation_id}", "created": int(now)})


def from_error(
    error: LlmqError,
    correlation_id: str | None,
    tenant: str | None,
    created_at: float | None = None,
    now: float | None = None,
    *,
    route: Route | None = None,
) -> InferenceResult:
    """An error reply; `route`, where the request had one (a failed generation's, which its
    copies share), puts the error in its experiment's arm (streams/experiment_stats.py)."""
    now = time.time() if now is None else now
    return InferenceResult(
        correlation_id=correlation_id,
        tenant=tenant,
        status="error",
        route=route,
        error=ErrorInfo.from_error(error),
        timings=Timings(total_ms=_total_ms(created_at, now)),
        finished_at=now,
    )
