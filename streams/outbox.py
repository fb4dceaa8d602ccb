"""Everything the stream processor publishes: replies, dead letters, and work for the engines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from pydantic import ValidationError

from schemas.errors import ErrorCode, LlmqError
from schemas.names import (
    DLQ,
    HEADER_ERROR_CODE,
    HEADER_ORIGINAL_BYTES,
    HEADER_REASON,
    HEADER_SOURCE_TOPIC,
    work_topic,
)
from schemas.redact import content_log, explain
from schemas.result import ChatCompletion, InferenceResult
from schemas.work import Completion, WorkItem
from streams import metrics, replies
from streams.admit import MAX_RECORD_BYTES, Rejection, salvage

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024
"""A dead-lettered record's key is cut to this (llmq's own keys are ids and fingerprints)."""


class Store(Protocol):
    """The exact response cache and the result store (RedisStore in production)."""

    async def cached(self, fingerprint: str) -> ChatCompletion | None: ...

    async def cache(self, fingerprint: str, response: ChatCompletion) -> None: ...

    async def keep_result(self, result: InferenceResult) -> InferenceResult: ...


class Send(Protocol):
    """Publish one record and return once the broker has acknowledged it."""

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
    ) -> None: ...


class Outbox:
    """Publishing with the guarantees the design asks for: a reply is stored and sent, a
    rejected record is dead-lettered with its reason, and nothing raises out of an agent."""

    def __init__(self, store: Store, send: Send) -> None:
        self.store = store
        self.send = send

    async def guarded(
        self,
        source: str,
        key: bytes | None,
        value: bytes | None,
        handle: Callable[[], Awaitable[None]],
        requester: Callable[[LlmqError, bytes | None], Rejection] = salvage,
    ) -> None:
        """Run one record's handler; an unexpected failure dead-letters the record with a
        retriable error reply to whoever `requester` finds in it. faust would commit past a
        raising agent and the app would wait forever, so this never raises (but a failed
        dead-letter send does)."""
        try:
            await handle()
        except Exception as exc:
            reason = explain(exc)
            log.error(
                "failed on a record of %s; dead-lettering it: %s",
                source,
                reason,
                exc_info=not isinstance(exc, ValidationError),  # its traceback quotes inputs
            )
            error = LlmqError(ErrorCode.INTERNAL_ERROR, f"the stream processor failed: {reason}")
            await self.reject(source, key, value, requester(error, value))

    async def work(self, item: WorkItem) -> None:
        """Hand a work item to the workers of its current model, in its lane."""
        await self.send(
            work_topic(item.model, item.request.lane),
            item.fingerprint.encode(),
            item.model_dump_json().encode(),
        )

    async def reply(self, topic: str | None, result: InferenceResult) -> None:
        """Store the result, then publish it when there is a topic. Both are idempotent: a
        request answered before (a redelivery) is answered with its first result again."""
        result = await self.store.keep_result(result)
        content_log.debug(
            "answered %s/%s (%s): %r",
            result.tenant,
            result.correlation_id,
            result.cache.value,
            result.text,
        )
        if topic is None:
            return
        key = result.correlation_id.encode() if result.correlation_id else None
        await self.send(topic, key, result.model_dump_json().encode())
        if result.timings.total_ms is not None:
            metrics.RESULT_LATENCY.labels(result.cache.value).observe(
                result.timings.total_ms / 1000
            )

    async def reply_all(self, results: Sequence[tuple[str | None, InferenceResult]]) -> None:
        """Several replies at once: their broker round trips overlap."""
        await asyncio.gather(*(self.reply(topic, result) for topic, result in results))

    async def refuse(self, why: Rejection) -> None:
        """An error reply for a request that is well-formed but not served (rate limits,
        budgets): it is answered, not dead-lettered."""
        metrics.REJECTIONS.labels(why.error.code.value).inc()
        log.info("refused %s: %s", why.correlation_id, why.error)
        if why.correlation_id is not None:
            await self.reply(
                why.reply_to, replies.from_error(why.error, why.correlation_id, why.tenant)
            )

    async def reject(
        self, source: str, key: bytes | None, raw: bytes | None, why: Rejection
    ) -> None:
        """Dead-letter the raw record and, where the envelope allows, send an error reply."""
        metrics.REJECTIONS.labels(why.error.code.value).inc()
        log.info(
            "rejected %s (%s): %s", why.correlation_id or "a record", why.error.code, why.error
        )
        await self.dead_letter(source, key, raw, why.error)
        if why.correlation_id is not None:
            result = replies.from_error(why.error, why.correlation_id, why.tenant)
            await self.reply(why.reply_to, result)

    async def dead_letter(
        self, source: str, key: bytes | None, raw: bytes | None, error: LlmqError
    ) -> None:
        """The raw record on llmq.dlq, with the reason, error code and source topic.

        A record too large to admit is cut to the admission limit (its original length in a
        header): as it came, it may not fit in a message the producer or the broker takes.
        """
        headers = {
            HEADER_REASON: error.message.encode(),
            HEADER_ERROR_CODE: error.code.value.encode(),
            HEADER_SOURCE_TOPIC: source.encode(),
        }
        value = raw or b""
        if len(value) > MAX_RECORD_BYTES:
            headers[HEADER_ORIGINAL_BYTES] = str(len(value)).encode()
            value = value[:MAX_RECORD_BYTES]
        if key is not None and len(key) > MAX_KEY_BYTES:
            key = key[:MAX_KEY_BYTES]
        await self.send(DLQ, key, value, headers)
        metrics.DEAD_LETTERS.labels(source).inc()


def work_requester(error: LlmqError, raw: bytes | None) -> Rejection:
    """Who is waiting on a WorkItem or Completion record (both carry the request)."""
    try:
        request = WorkItem.model_validate_json(raw or b"").request
    except ValidationError:
        try:
            request = Completion.model_validate_json(raw or b"").work.request
        except ValidationError:
            return Rejection(error, None, None, None)
    return Rejection(error, request.correlation_id, request.tenant, request.reply_to)
