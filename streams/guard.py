"""The agents' error boundary: a record whose handling fails unexpectedly is dead-lettered
and answered, never skipped."""

from __future__ import annotations

import asyncio
import logging
import time
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
"""The longest pause between two tries of a send Kafka did not take."""
GIVE_UP_S = 300.0
"""How long a send is tried again while Kafka's failure may pass: past it (a reply topic
deleted), the failure is raised, and faust commits past the record."""


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
        """Dead-letter, then answer, each tried again while Kafka is away (`until_taken`):
        a raise would let faust commit past the record, unanswered."""
        await until_taken(
            lambda: self._refusals.dead_letter(source, key, value, why),
            f"a dead letter of {source}",
        )
        await until_taken(lambda: self._refusals.answer(why), "an error reply")


async def until_taken(send: Callable[[], Awaitable[object]], what: str) -> None:
    """`send()`, again with a growing pause while Kafka's failure may pass, for up to
    GIVE_UP_S; a failure that cannot pass, or lasts longer, is raised. A SIGTERM's
    cancellation stops the tries with the record not acknowledged."""
    pause, deadline = 0.5, time.monotonic() + GIVE_UP_S
    while True:
        try:
            await send()
            return
        except (KafkaError, TimeoutError) as exc:
            if not _passing(exc) or time.monotonic() > deadline:
                raise
            log.error("could not send %s; again in %.1f s: %s", what, pause, explain(exc))
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
