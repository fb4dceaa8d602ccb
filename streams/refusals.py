"""Requests that will not be served get an error reply; only poison is dead-lettered. Each
is said at DEBUG alone: llmq_streams_rejections_total counts them by code, llmq.dlq keeps
the rejected records with their reasons, and a line per request at INFO would let one
tenant past its rate limit fill the log."""

from __future__ import annotations

import logging

from streams import metrics, replies
from streams.outbox import Outbox
from streams.resend import until_taken
from streams.salvage import Rejection

log = logging.getLogger(__name__)


class Refusals:
    """The two ways a request ends without an answer: refused (well-formed, but over a
    limit: answered, not poison) or rejected (invalid or failing: dead-lettered too). Each
    send is tried again while Kafka is away (until_taken): one that raised would reach the
    Guard, which would dead-letter the record again and release a hold it should not."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def refuse(self, why: Rejection) -> None:
        """An error reply for a request that is well-formed but not served (rate limits,
        budgets): it is answered, not dead-lettered. A budget hold of its correlation id
        stays: the record placed none (the gate gives back what it placed), so it is another
        record's of that id."""
        metrics.REJECTIONS.labels(why.error.code.value).inc()
        log.debug("refused %s: %s", why.correlation_id, why.error)
        await self.answer(why, release=False)

    async def reject(
        self,
        source: str,
        key: bytes | None,
        raw: bytes | None,
        why: Rejection,
        release: bool = True,
    ) -> None:
        """Dead-letter the raw record and, where the envelope allows, send an error reply
        that gives back the budget hold of its correlation id, if `release` (not for a
        record rejected before its gate: see refuse; nor after a send that timed out: see
        Guard)."""
        await self.dead_letter(source, key, raw, why)
        await self.answer(why, release)

    async def dead_letter(
        self, source: str, key: bytes | None, raw: bytes | None, why: Rejection
    ) -> None:
        """The first half of `reject`: the raw record to the DLQ, counted and logged."""
        metrics.REJECTIONS.labels(why.error.code.value).inc()
        log.debug("rejected %s: %s", why.correlation_id or "a record", why.error)
        await until_taken(
            lambda: self._outbox.dead_letter(source, key, raw, why.error),
            f"the dead letter of {record_of(source, why.correlation_id)}",
        )

    async def answer(self, why: Rejection, release: bool = True) -> None:
        """The second half of `reject`: the error reply, where the envelope allows one."""
        if why.correlation_id is not None:
            result = replies.from_error(why.error, why.correlation_id, why.tenant, route=why.route)
            await until_taken(
                lambda: self._outbox.reply(why.reply_to, result, release),
                f"the error reply to {why.correlation_id}",
            )


def record_of(source: str, correlation_id: str | None) -> str:
    """A record of `source` in a log line, named by its request's id where one was read."""
    return f"a record of {source} ({correlation_id or 'no readable id'})"
