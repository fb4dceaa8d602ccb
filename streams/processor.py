"""What the stream processor does with each record; the faust app only wires it to topics."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from pydantic import ValidationError

from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.result import ChatCompletion, InferenceResult
from schemas.topics import (
    COMPLETIONS,
    DLQ,
    HEADER_ERROR_CODE,
    HEADER_REASON,
    HEADER_SOURCE_TOPIC,
    REQUESTS,
    work_topic,
)
from schemas.work import Completion
from streams import metrics, replies
from streams.admit import Rejection, admit, salvage

log = logging.getLogger(__name__)


class Store(Protocol):
    """The response cache and the result store (RedisStore in production)."""

    async def cached(self, fingerprint: str) -> ChatCompletion | None: ...

    async def cache(self, fingerprint: str, response: ChatCompletion) -> None: ...

    async def keep_result(self, result: InferenceResult) -> None: ...


class Send(Protocol):
    """Publish one record and return once the broker has acknowledged it."""

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
    ) -> None: ...


class Processor:
    """Admission, exact caching and routing of requests; completions into results."""

    def __init__(self, catalog: Catalog, store: Store, send: Send) -> None:
        self._catalog = catalog
        self._store = store
        self._send = send

    async def on_request(self, key: bytes | None, value: bytes) -> None:
        """One record of llmq.requests: reject it, answer it from the cache, or route it.

        Never raises for a bad record: faust would commit past it, and the app would wait
        forever. An unexpected failure dead-letters the record with an error reply.
        """
        try:
            await self._on_request(key, value)
        except Exception as exc:
            log.exception("failed on a request; dead-lettering it")
            error = LlmqError(ErrorCode.INTERNAL_ERROR, f"the stream processor failed: {exc!r}")
            await self._reject(REQUESTS, key, value, salvage(error, value))

    async def on_completion(self, value: bytes) -> None:
        """One record of llmq.completions: fill the cache, store the result, reply.

        Never raises for a bad record, for the same reason as on_request.
        """
        try:
            await self._on_completion(value)
        except Exception as exc:
            log.exception("failed on a completion; dead-lettering it")
            error = LlmqError(ErrorCode.INTERNAL_ERROR, f"the stream processor failed: {exc!r}")
            await self._dead_letter(COMPLETIONS, None, value, error)

    async def _on_request(self, key: bytes | None, value: bytes) -> None:
        work = admit(value, self._catalog)
        if isinstance(work, Rejection):
            await self._reject(REQUESTS, key, value, work)
            return
        request = work.request
        if request.cacheable:
            cached = await self._store.cached(work.fingerprint)
            if cached is not None:
                metrics.REQUESTS.labels("cache_hit").inc()
                await self._reply(request.reply_to, replies.from_cache(work, cached))
                return
        metrics.REQUESTS.labels("routed").inc()
        await self._send(
            work_topic(work.model, request.lane),
            work.fingerprint.encode(),
            work.model_dump_json().encode(),
        )

    async def _on_completion(self, value: bytes) -> None:
        try:
            completion = Completion.model_validate_json(value)
        except ValidationError as exc:
            error = LlmqError(ErrorCode.INVALID_REQUEST, f"unreadable completion: {exc}")
            await self._dead_letter(COMPLETIONS, None, value, error)
            return
        request = completion.work.request
        if completion.response is not None and request.cacheable:
            await self._store.cache(completion.work.fingerprint, completion.response)
        result = replies.from_completion(completion)
        metrics.COMPLETIONS.labels(result.status).inc()
        await self._reply(request.reply_to, result)

    async def _reply(self, topic: str | None, result: InferenceResult) -> None:
        """Store the result, then publish it when there is a topic; both are idempotent."""
        await self._store.keep_result(result)
        if topic is None:
            return
        key = result.correlation_id.encode() if result.correlation_id else None
        await self._send(topic, key, result.model_dump_json().encode())
        if result.timings.total_ms is not None:
            metrics.RESULT_LATENCY.labels(result.cache.value).observe(
                result.timings.total_ms / 1000
            )

    async def _reject(self, source: str, key: bytes | None, raw: bytes, why: Rejection) -> None:
        """Dead-letter the raw record and, where the envelope allows, send an error reply."""
        metrics.REQUESTS.labels("rejected").inc()
        metrics.REJECTIONS.labels(why.error.code.value).inc()
        log.info(
            "rejected %s (%s): %s", why.correlation_id or "a record", why.error.code, why.error
        )
        await self._dead_letter(source, key, raw, why.error)
        if why.correlation_id is not None:
            result = replies.from_error(why.error, why.correlation_id, why.tenant)
            await self._reply(why.reply_to, result)

    async def _dead_letter(
        self, source: str, key: bytes | None, raw: bytes, error: LlmqError
    ) -> None:
        headers = {
            HEADER_REASON: error.message.encode(),
            HEADER_ERROR_CODE: error.code.value.encode(),
            HEADER_SOURCE_TOPIC: source.encode(),
        }
        await self._send(DLQ, key, raw, headers)
