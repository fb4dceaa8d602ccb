"""Stage 1, llmq.requests: validate, apply the tenant's limits, compress, fingerprint, answer
an exact-cache hit, else re-key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from schemas.catalog import Catalog
from schemas.errors import LlmqError
from schemas.names import REQUESTS, REQUESTS_KEYED
from schemas.redact import content_log
from schemas.request import ChatMessage, InferenceRequest
from schemas.result import CacheStatus
from schemas.work import WorkItem
from streams import metrics, replies
from streams.admit import parse, route
from streams.guard import Guard
from streams.outbox import Outbox
from streams.refusals import Refusals
from streams.salvage import salvage

Compress = Callable[[list[ChatMessage]], list[ChatMessage]]
Ahead = Callable[[WorkItem], None]
"""Told of each request sent on to dedupe (streams.ahead.EmbedAhead in production)."""


class Gate(Protocol):
    """A tenant's rate limits and budget; raises LlmqError when the request must wait, else
    returns the work to send on (its terms may change: streams.gate)."""

    async def check(self, work: WorkItem) -> WorkItem: ...


class Admission:
    """Turns each app record into a WorkItem on llmq.requests.keyed, or an error reply."""

    def __init__(
        self,
        catalog: Catalog,
        outbox: Outbox,
        gate: Gate | None = None,
        compress: Compress | None = None,
        ahead: Ahead | None = None,
    ) -> None:
        self._catalog = catalog
        self._outbox = outbox
        self._refusals = Refusals(outbox)
        self._guard = Guard(self._refusals)
        self._gate = gate
        self._compress = compress
        self._ahead = ahead

    async def on_request(self, key: bytes | None, value: bytes | None) -> None:
        """One record of llmq.requests; never raises (see Guard)."""
        await self._guard.run(REQUESTS, key, value, lambda: self._admit(key, value))

    async def _admit(self, key: bytes | None, value: bytes | None) -> None:
        try:
            request, original = await self._compressed(parse(value))
            work = route(request, self._catalog, uncompressed=original)
        except LlmqError as error:
            # Its reply releases no budget hold (none placed: one under its correlation id is
            # another record's), nor does the gate's refusal (the gate releases its own).
            metrics.REQUESTS.labels("rejected").inc()
            await self._refusals.reject(REQUESTS, key, value, salvage(error, value), release=False)
            return
        if self._gate is not None:
            try:
                work = await self._gate.check(work)
            except LlmqError as error:
                metrics.REQUESTS.labels("refused").inc()
                await self._refusals.refuse(salvage(error, value))
                return
        metrics.REQUESTS.labels("admitted").inc()
        content_log.debug(
            "admitted %s/%s: %r",
            work.request.tenant,
            work.request.correlation_id,
            [(m.role, m.content) for m in work.request.body.messages],
        )
        if work.request.cacheable and await self._answered_from_cache(work):
            return
        if self._ahead is not None:
            self._ahead(work)
        await self._outbox.send(
            REQUESTS_KEYED, work.fingerprint.encode(), work.model_dump_json().encode()
        )

    async def _answered_from_cache(self, work: WorkItem) -> bool:
        """Answer an exact-cache hit here: one trip through Kafka instead of two. Dedupe
        looks again, for answers cached while the request was on its way, and for the
        semantic cache and coalescing, which need the request's partition."""
        cached = await self._outbox.store.cached(work.fingerprint)
        if cached is None:
            return False
        metrics.REQUESTS.labels(f"cache_{CacheStatus.EXACT.value}").inc()
        await self._outbox.reply(
            work.request.reply_to, replies.from_cache(work, cached, CacheStatus.EXACT)
        )
        return True

    async def _compressed(
        self, request: InferenceRequest
    ) -> tuple[InferenceRequest, list[ChatMessage] | None]:
        """The request with its prompt compressed, and the app's messages if that changed them.
        Compressed in a thread: a long prompt takes a quarter of a second, which on the loop
        would hold every agent of the process (cache hits, replies, completions)."""
        body = request.body
        # A raw prompt's every blank counts; a tool call's id is made from the messages as
        # the app sent them (the front door reads a stream's calls from those).
        if self._compress is None or body.raw_prompt or body.tools is not None:
            return request, None
        original = list(request.body.messages)
        messages = await asyncio.to_thread(self._compress, original)
        if messages == original:
            return request, None
        body = request.body.model_copy(update={"messages": messages})
        return request.model_copy(update={"body": body}), original
