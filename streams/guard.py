"""The agents' error boundary: a record whose handling fails unexpectedly is dead-lettered
and answered, never skipped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError, KafkaTimeoutError
from pydantic import ValidationError

from schemas.errors import ErrorCode, LlmqError
from schemas.redact import explain
from schemas.request import RecordRefusedError
from streams.refusals import Refusals
from streams.salvage import Rejection, salvage

log = logging.getLogger(__name__)

Requester = Callable[[LlmqError, bytes | None], Rejection]
"""Finds whom to answer in a raw record of one topic (salvage, work_requester)."""

MAX_PAUSE_S = 30.0
"""The longest pause between two tries of a dead letter Kafka did not take."""


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
        failure of the dead letter that waiting cannot mend (Kafka's are tried again)."""
        try:
            await handle()
        except Exception as exc:
            if isinstance(exc, RecordRefusedError):
                # Too large for a topic it had to go to: the request's fault, and final.
                log.warning("refused a record of %s: %s", source, exc.message)
            else:
                log.error(
                    "failed on a record of %s; dead-lettering it: %s",
                    source,
                    explain(exc),
                    exc_info=not isinstance(exc, ValidationError),  # its traceback quotes inputs
                )
            await self._reject(source, key, value, requester(failure_of(exc), value))

    async def _reject(
        self, source: str, key: bytes | None, value: bytes | None, why: Rejection
    ) -> None:
        """Dead-letter and answer, again with a growing pause while Kafka refuses, however
        long it is away: a raise would let faust commit past the record, unanswered (a
        SIGTERM's cancellation stops the tries with the record not acknowledged)."""
        pause = 0.5
        while True:
            try:
                await self._refusals.reject(source, key, value, why)
                return
            except (KafkaError, TimeoutError) as exc:
                if not _passing(exc):
                    raise
                log.error(
                    "could not dead-letter a record of %s; again in %.1f s: %s",
                    source,
                    pause,
                    explain(exc),
                )
            await asyncio.sleep(pause)
            pause = min(2 * pause, MAX_PAUSE_S)


def _passing(exc: Exception) -> bool:
    """Whether waiting may mend a failed send: Kafka away or slow (a timeout, an error it
    calls retriable), not one it refuses for good (authorization, a record too large)."""
    return isinstance(exc, (TimeoutError, KafkaTimeoutError)) or (
        isinstance(exc, KafkaError) and exc.retriable
    )


def failure_of(exc: Exception) -> LlmqError:
    """What a request is told when its handling failed with `exc`: a refusal of a topic as
    it is (final), anything else a retriable internal error saying what went wrong."""
    if isinstance(exc, RecordRefusedError):
        return exc
    return LlmqError(ErrorCode.INTERNAL_ERROR, f"the stream processor failed: {explain(exc)}")
