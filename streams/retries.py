"""Retries of failed generations: the same model again, after exponential backoff with jitter."""

from __future__ import annotations

import time

from schemas.errors import LlmqError
from schemas.retry import RetryPolicy
from schemas.work import Completion, WorkItem


def retry_of(
    completion: Completion, policy: RetryPolicy, now: float | None = None
) -> WorkItem | None:
    """The next attempt at a failed generation, or None when the failure is final.

    Only retriable failures are tried again, and only while the policy allows another
    attempt that can start before the request's deadline. Its budget counts the time from
    the first failure on, less the time each retry waited in its queue for a worker (the
    clock is carried on the retry as WorkItem.first_failed_at, moved on by each retry's
    Timings.queue_ms): a queue's wait, before the first attempt or behind a batch lane's
    backlog, is not time spent retrying. A failure the engine already retried is final
    here: retries do not stack.
    """
    error = completion.error
    if error is None or not error.retriable or completion.engine_retried:
        return None
    now = time.time() if now is None else now
    work = completion.work
    if work.first_failed_at is None:
        first_failed_at = now
    else:
        first_failed_at = work.first_failed_at + (completion.timings.queue_ms or 0.0) / 1000
    delay = policy.delay(work.attempt, now - first_failed_at, error.retry_after_s)
    if delay is None:
        return None
    start = now + delay
    deadline = work.request.deadline
    if deadline is not None and start >= deadline:
        return None
    return work.model_copy(
        update={
            "attempt": work.attempt + 1,
            "not_before": start,
            "first_failed_at": first_failed_at,
        }
    )


def final_failure(completion: Completion) -> LlmqError | None:
    """The error of a generation that failed for good after retries, for the DLQ and the
    app; None for an answer, or for a failure no retry could have helped (bad request). Its
    retry_after_s is kept: the batch collector reschedules a line by it, the door answers
    Retry-After with it."""
    error = completion.error
    if error is None or not error.retriable:
        return None
    attempts = completion.work.attempt
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    return LlmqError(error.code, f"failed after {tries}: {error.message}", error.retry_after_s)
