"""The agents' error boundary: a record whose handling fails unexpectedly is dead-lettered
and answered, never skipped."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from schemas.errors import ErrorCode, LlmqError
from schemas.redact import explain
from schemas.request import RecordRefusedError
from streams.refusals import Refusals, record_of
from streams.resend import UNACKNOWLEDGED
from streams.salvage import Rejection, salvage

log = logging.getLogger(__name__)

Requester = Callable[[LlmqError, bytes | None], Rejection]
"""Finds whom to answer in a raw record of one topic (salvage, work_requester)."""


class Guard:
    """Runs each record's handler so that nothing raises out of an agent: faust would commit
    past a raising agent, and the app would wait forever."""

    def __init__(self, refusals: Refusals) -> None:
        self._refusals = refusals

    async def run(
        self,
        source: str,
        key: bytes | None,
        value: bytes | None,
        handle: Callable[[], Awaitable[None]],
        requester: Requester = salvage,
    ) -> None:
        """Run one record's handler; an unexpected failure dead-letters the record with a
        retriable error reply to whoever `requester` finds in it. This never raises but a
        failure of the dead letter that waiting cannot mend (Refusals tries Kafka's again).
        The reply gives back the request's budget hold, but after a send whose ack did not
        come in time (TimeoutError: streams.resend.ACK_TIMEOUT_S): the record may still be
        delivered and generated, so its hold stays until it expires (docs/budgets.md)."""
        try:
            await handle()
        except Exception as exc:
            why = requester(failure_of(exc), value)
            _said(source, why.correlation_id, exc)
            release = not isinstance(exc, TimeoutError)
            await self._refusals.reject(source, key, value, why, release)


def _said(source: str, correlation_id: str | None, exc: Exception) -> None:
    """A failed record in the log, named by its request's id: the request's own fault or
    Kafka's timeout as a warning (llmq.throttle holds its repeats), anything else, a bug, as
    an error with its traceback."""
    record = record_of(source, correlation_id)
    if isinstance(exc, RecordRefusedError):
        # Too large for a topic it had to go to: the request's fault, and final.
        log.warning("refused %s: %s", record, exc.message)
    elif isinstance(exc, TimeoutError):
        log.warning("dead-lettering %s: %s", record, UNACKNOWLEDGED)
    else:
        log.error(
            "failed on %s; dead-lettering it: %s",
            record,
            explain(exc),
            exc_info=not isinstance(exc, ValidationError),  # its traceback quotes inputs
        )


def failure_of(exc: Exception) -> LlmqError:
    """What a request is told when its handling failed with `exc`: a refusal of a topic as
    it is (final), anything else a retriable internal error naming the kind of failure
    alone (an exception's text may quote internals)."""
    if isinstance(exc, RecordRefusedError):
        return exc
    kind = UNACKNOWLEDGED if isinstance(exc, TimeoutError) else type(exc).__name__
    return LlmqError(ErrorCode.INTERNAL_ERROR, f"the stream processor failed: {kind}")
