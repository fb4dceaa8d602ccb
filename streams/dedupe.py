"""Stage 2, llmq.requests.keyed: answer from the caches, coalesce copies, route the rest."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Protocol

from schemas.names import REQUESTS_KEYED
from schemas.result import CacheStatus, ChatCompletion
from schemas.work import WorkItem
from streams import metrics, replies
from streams.coalesce import Coalescer
from streams.guard import Guard
from streams.outbox import Outbox
from streams.refusals import Refusals
from streams.salvage import work_requester
from streams.semantic import SemanticHit, semantic_key


class Similar(Protocol):
    """The semantic cache (SemanticCache in production)."""

    async def lookup(self, scope: str, text: str) -> SemanticHit | None: ...

    async def add(self, scope: str, text: str, fingerprint: str) -> None: ...

    async def forget(self, scope: str, fingerprint: str) -> None: ...


class Dedupe:
    """Exact cache, then semantic cache, then the generation in flight; else lead and route.

    Runs as one actor per partition (it writes the coalescing table), so copies of a
    request are handled one after the other and exactly one of them leads.
    """

    def __init__(self, outbox: Outbox, coalescer: Coalescer, similar: Similar | None) -> None:
        self._outbox = outbox
        self._guard = Guard(Refusals(outbox))
        self._coalescer = coalescer
        self._similar = similar

    async def on_keyed(self, key: bytes | None, value: bytes | None) -> None:
        """One record of llmq.requests.keyed; never raises (see Guard)."""
        await self._guard.run(
            REQUESTS_KEYED, key, value, lambda: self._dedupe(value), work_requester
        )

    async def _dedupe(self, value: bytes | None) -> None:
        work = WorkItem.model_validate_json(value or b"")
        request = work.request
        if not request.cacheable:
            # A sampled request wants its own sample: no cache, no sharing.
            metrics.REQUESTS.labels("routed").inc()
            await self._outbox.work(work)
            return
        if self._coalescer.join(request, work.fingerprint):
            metrics.REQUESTS.labels("coalesced").inc()
            leader = self._coalescer.leader(work.fingerprint)
            if request.body.stream and leader is not None:
                # Its stream is the leader's: tell whoever reads it where to look.
                await self._outbox.follows(request, leader.correlation_id)
            return
        try:
            await self._lead(work)
        except BaseException:
            # Nobody may wait on a generation that will never come: the entry goes before
            # the failure propagates (and this request gets its error reply).
            self._coalescer.drop(work.fingerprint)
            raise

    async def _lead(self, work: WorkItem) -> None:
        """The first copy: answer it from the exact cache; else send it to the engines and,
        meanwhile, look it up in the semantic cache (speculation: a miss, the common case,
        does not wait for the lookup's embedding), answering it from there on a hit."""
        request = work.request
        cached = await self._outbox.store.cached(work.fingerprint)
        if cached is not None:
            await self._answer(work, cached, CacheStatus.EXACT)
            return
        similar = self._similar
        key = None if similar is None else semantic_key(request, work.route.cached_as)
        if similar is None or key is None:
            metrics.REQUESTS.labels("routed").inc()
            await self._outbox.work(work)
            return
        lookup = asyncio.create_task(self._similar_answer(similar, *key))
        try:
            await self._outbox.work(work.model_copy(update={"speculative": True}))
        except BaseException:
            lookup.cancel()
            raise
        cached = await lookup
        if cached is None:
            metrics.SPECULATIONS.labels("miss").inc()
            metrics.REQUESTS.labels("routed").inc()
            return
        if request.body.stream and not await self._outbox.store.claim(
            request.tenant, request.correlation_id
        ):
            # Its engine's first tokens are out: that generation answers it.
            metrics.SPECULATIONS.labels("late").inc()
            metrics.REQUESTS.labels("routed").inc()
            return
        metrics.SPECULATIONS.labels("hit").inc()
        # Its hold stays until the cancelled generation's outcome says what it cost.
        await asyncio.gather(
            self._outbox.cancel(request),
            self._answer(work, cached, CacheStatus.SEMANTIC, holding=request.correlation_id),
        )

    async def _answer(
        self,
        work: WorkItem,
        cached: ChatCompletion,
        status: CacheStatus,
        holding: str | None = None,
    ) -> None:
        """Answer the request, and every copy that joined it meanwhile, from a cache."""
        metrics.REQUESTS.labels(f"cache_{status.value}").inc()
        first = replies.from_cache(work, cached, status)
        # A stale entry may have left followers to this request: they share its answer.
        await self._coalescer.settle(
            work.fingerprint,
            [(work.request.reply_to, first)],
            lambda w: (w.reply_to, replies.for_follower(first, w)),
            partial(self._outbox.reply_all, holding=holding),
        )

    async def _similar_answer(
        self, similar: Similar, scope: str, text: str
    ) -> ChatCompletion | None:
        """The answer of the semantic cache's match for the question, if any."""
        hit = await similar.lookup(scope, text)
        if hit is None:
            return None
        cached = await self._outbox.store.cached(hit.fingerprint)
        if cached is None:
            # The answer behind that vector has expired from the exact cache.
            await similar.forget(scope, hit.fingerprint)
        return cached
