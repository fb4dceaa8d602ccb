"""Everything the stream processor publishes: work for the engines, replies, dead letters."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from llmq.record_limits import dead_letter_within
from schemas.dlq import dead_letter
from schemas.errors import ErrorCode, LlmqError
from schemas.metering import MeteringEvent
from schemas.names import CANCELS, DLQ, HEADER_TOKENS, TOKENS, work_topic
from schemas.redact import content_log
from schemas.request import InferenceRequest, RecordRefusedError
from schemas.result import ChatCompletion, InferenceResult
from schemas.stream import Cancel, TokenDelta
from schemas.work import WorkItem
from streams import metrics
from streams.replies import from_error

log = logging.getLogger(__name__)

REPLIES_AT_ONCE = 32
"""Replies reply_all sends at once. Each makes a few Redis calls (store, hold, counters) and
a broker round trip: 32 overlap enough of them, and a burst of thousands of coalesced copies
queues here, not as thousands of calls on the Redis pool (llmq.redis_client) that every
agent shares."""


class Store(Protocol):
    """The exact response cache, the result store, the claims of speculative streamed
    requests and the marks of work handed on (RedisStore in production)."""

    async def cached(self, fingerprint: str) -> ChatCompletion | None: ...

    async def cache(self, fingerprint: str, response: ChatCompletion) -> None: ...

    async def claim(self, tenant: str, correlation_id: str) -> bool: ...

    async def keep_result(self, result: InferenceResult) -> InferenceResult: ...

    async def handed_on(self, tenant: str, correlation_id: str, step: str) -> bool: ...

    async def mark_handed_on(
        self, tenant: str, correlation_id: str, step: str, until: float
    ) -> None: ...


class Ledger(Protocol):
    """Budget holds (streams.gate.TenantGate in production): a generation's cost is settled
    before its request is answered, and an answered request releases what it still holds."""

    async def settle(self, event: MeteringEvent | None) -> None: ...

    async def release(self, result: InferenceResult) -> None: ...


class Answered(Protocol):
    """Told of every result once it is stored (streams.savings.Savings in production)."""

    async def answered(self, result: InferenceResult) -> None: ...


class Send(Protocol):
    """Publish one record (to `partition`, or where its key hashes) and return once the
    broker has acknowledged it."""

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
        partition: int | None = None,
    ) -> None: ...


class Placer(Protocol):
    """Chooses a work record's partition (streams.affinity.PrefixAffinity in production)."""

    async def partition(self, topic: str, item: WorkItem) -> int: ...


class Outbox:
    """Publishing with the guarantees the design asks for: every call returns once the
    broker has what it published, and a reply is stored before it is sent."""

    def __init__(
        self,
        store: Store,
        send: Send,
        ledger: Ledger | None = None,
        answered: Sequence[Answered] = (),
        placer: Placer | None = None,
    ) -> None:
        self.store = store
        self.send = send
        self.ledger = ledger
        self.answered = answered
        self.placer = placer

    async def work(self, item: WorkItem) -> None:
        """Hand a work item to the workers of its current model, in its lane; its estimated
        tokens ride in a header, so the autoscaler weighs the backlog without parsing it. The
        placer chooses its partition; without one, its fingerprint does. Every send of work
        goes through here, stamped with its time (WorkItem.sent_at: queue time is from it)."""
        item = item.model_copy(update={"sent_at": time.time()})
        topic = work_topic(item.model, item.request.lane)
        await self.send(
            topic,
            item.fingerprint.encode(),
            item.model_dump_json().encode(),
            {HEADER_TOKENS: str(item.request.body.estimated_tokens()).encode()},
            None if self.placer is None else await self.placer.partition(topic, item),
        )

    async def reply(self, topic: str | None, result: InferenceResult, release: bool = True) -> None:
        """Store the result, release the request's budget hold (unless a generation of it may
        still cost: its outcome releases it), then publish the result when there is a topic
        while those who count answers (savings, experiments) count it. All are idempotent: a
        request answered before (a redelivery) is answered with its first result again, and
        counted once."""
        result = await self.store.keep_result(result)
        if self.ledger is not None and release:
            await self.ledger.release(result)
        content_log.debug(
            "answered %s/%s (%s): %r",
            result.tenant,
            result.correlation_id,
            result.cache.value,
            result.text,
        )
        counted = (counter.answered(result) for counter in self.answered)
        await asyncio.gather(self._publish(topic, result), *counted)

    async def _publish(self, topic: str | None, result: InferenceResult) -> None:
        if topic is None:
            return
        key = result.correlation_id.encode() if result.correlation_id else None
        try:
            await self.send(topic, key, result.model_dump_json().encode())
        except RecordRefusedError as refused:
            # The app is told why instead; the stored result stays as it was.
            metrics.REJECTIONS.labels(ErrorCode.ANSWER_TOO_LARGE.value).inc()
            why = f"the answer was not delivered: {refused.message}"
            error = LlmqError(ErrorCode.ANSWER_TOO_LARGE, why)
            failure = from_error(error, result.correlation_id, result.tenant)
            try:
                await self.send(topic, key, failure.model_dump_json().encode())
            except RecordRefusedError as again:
                log.error("cannot tell %s why: %s", result.correlation_id, again.message)
        if result.timings.total_ms is not None:
            # By lane: the batch lane yields to the others, so its latency is apart.
            lane = "none" if result.lane is None else result.lane.value
            metrics.RESULT_LATENCY.labels(result.cache.value, lane).observe(
                result.timings.total_ms / 1000
            )

    async def reply_all(
        self, results: Sequence[tuple[str | None, InferenceResult]], holding: str | None = None
    ) -> None:
        """Several replies, REPLIES_AT_ONCE at a time: their broker round trips overlap. The
        hold of the request whose correlation_id is `holding` stays (see reply)."""
        at_once = asyncio.Semaphore(REPLIES_AT_ONCE)

        async def one(topic: str | None, result: InferenceResult) -> None:
            async with at_once:
                await self.reply(topic, result, release=result.correlation_id != holding)

        await asyncio.gather(*(one(topic, result) for topic, result in results))

    async def cancel(self, work: WorkItem) -> None:
        """Stop the speculative generation of a request a cache answered: its worker skips
        or aborts it, and its outcome is SUPERSEDED."""
        request = work.request
        cancel = Cancel(
            correlation_id=request.correlation_id,
            tenant=request.tenant,
            answered=True,
            speculation=work.speculation,
        )
        await self.send(CANCELS, request.correlation_id.encode(), cancel.model_dump_json().encode())

    async def follows(self, request: InferenceRequest, leader: str) -> None:
        """Tell the reader of a streamed request, on llmq.tokens, that its answer streams
        under `leader`'s correlation_id (coalescing: one generation for both)."""
        notice = TokenDelta(
            correlation_id=request.correlation_id, tenant=request.tenant, follows=leader
        )
        await self.send(TOKENS, request.correlation_id.encode(), notice.model_dump_json().encode())

    async def dead_letter(
        self, source: str, key: bytes | None, raw: bytes | None, error: LlmqError
    ) -> None:
        """The raw record on llmq.dlq, with the reason, error code and source topic."""
        letter = dead_letter(source, key, raw, error)
        try:
            await self.send(DLQ, letter.key, letter.value, letter.headers)
        except RecordRefusedError as refused:
            # Cut to fit; to its reason alone where the limit is unknown.
            letter = dead_letter_within(source, key, raw, error, refused.limit or 0)
            try:
                await self.send(DLQ, letter.key, letter.value, letter.headers)
            except RecordRefusedError as again:
                log.error("a record of %s was not dead-lettered: %s", source, again.message)
                return
        metrics.DEAD_LETTERS.labels(source).inc()
