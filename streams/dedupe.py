"""Stage 2, llmq.requests.keyed: answer from the caches, coalesce copies, route the rest."""

from __future__ import annotations

import asyncio
import logging
import uuid
from functools import partial
from typing import Protocol

from llmq.futures import read_outcome
from schemas.catalog import Catalog
from schemas.errors import LlmqError
from schemas.lanes import Lane
from schemas.names import REQUESTS_KEYED
from schemas.result import CacheStatus, ChatCompletion, InferenceResult
from schemas.work import WorkItem
from streams import metrics, replies
from streams.coalesce import Coalescer
from streams.guard import Guard, failure_of
from streams.outbox import Outbox
from streams.refusals import Refusals
from streams.resend import until_taken
from streams.salvage import work_requester
from streams.semantic import SemanticHit, semantic_key

log = logging.getLogger(__name__)


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

    def __init__(
        self, catalog: Catalog, outbox: Outbox, coalescer: Coalescer, similar: Similar | None
    ) -> None:
        self._catalog = catalog
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
            followed = None if leader is None else leader.correlation_id
            if request.body.stream and followed not in (None, request.correlation_id):
                # Its stream is the leader's: tell whoever reads it where to look. Not where it
                # leads itself (redelivered to the process that sent its work): its reader would
                # start its own stream over at that notice, and never get past it.
                await self._outbox.follows(request, followed)
            return
        try:
            try:
                await self._lead(work)
            except Exception as exc:
                # Copies kept from a live leader this request took over (Coalescer.join) go
                # back to it: its generation may still answer them. Those kept from a stale one
                # share this request's failure (its own reply is the Guard's): nobody waits on
                # a generation that will never come.
                if not self._coalescer.hand_back(work.fingerprint, request.correlation_id):
                    await fail_copies(self._coalescer, self._outbox, work, failure_of(exc))
                raise
        except BaseException as exc:
            if not isinstance(exc, Exception):
                # Cancelled (a SIGTERM, a revoked partition), also while telling the copies:
                # the record comes again, here or elsewhere, and leads anew for the copies.
                self._coalescer.abandon(work.fingerprint, request.correlation_id)
            raise

    async def _lead(self, work: WorkItem) -> None:
        """The first copy: answer it from the exact cache; else from the semantic cache, or
        send it to the engines (before the lookup ends, except on the batch lane)."""
        request = work.request
        cached = await self._outbox.store.cached(work.fingerprint)
        if cached is not None:
            await self._answer(work, cached, CacheStatus.EXACT)
            return
        similar = self._similar
        key = (
            None
            if similar is None
            else semantic_key(request, self._catalog.cache_scope(work.route))
        )
        if similar is None or key is None:
            await self._route(work)
        elif request.lane is not Lane.BATCH:
            await self._speculate(work, similar, key)
        else:
            await self._look_up_first(work, similar, key)

    async def _route(self, work: WorkItem) -> None:
        metrics.REQUESTS.labels("routed").inc()
        await self._outbox.work(work)

    async def _look_up_first(self, work: WorkItem, similar: Similar, key: tuple[str, str]) -> None:
        """No hurry on the batch lane: looked up first, a hit leaves nothing queued. A lookup
        that fails is a miss, as on the other lanes: the engines answer."""
        try:
            cached = await self._similar_answer(similar, *key)
        except Exception:
            log.exception(
                "the semantic cache could not answer %s: its generation does",
                work.request.correlation_id,
            )
            cached = None
        if cached is None:
            await self._route(work)
        else:
            await self._answer(work, cached, CacheStatus.SEMANTIC)

    async def _speculate(self, work: WorkItem, similar: Similar, key: tuple[str, str]) -> None:
        """Send the work to the engines and look its question up meanwhile: a miss, the
        common case, does not wait for the lookup's embedding. A hit is answered from the
        cache, and its generation cancelled, unless that generation answered first."""
        request = work.request
        lookup = asyncio.create_task(self._similar_answer(similar, *key))
        leader = self._coalescer.leader(work.fingerprint)
        send = uuid.uuid4().hex if leader is None else leader.send
        sent = work.model_copy(update={"speculation": send})
        try:
            await self._outbox.work(sent)
        except BaseException:
            lookup.cancel()
            lookup.add_done_callback(read_outcome)
            raise
        try:
            cached = await lookup
            outcome = "miss" if cached is None else await self._claim(work)
        except Exception:
            log.exception(
                "the semantic cache could not answer %s: its generation does",
                request.correlation_id,
            )
            cached, outcome = None, "error"
        metrics.SPECULATIONS.labels(outcome).inc()
        if cached is None or outcome != "hit":
            metrics.REQUESTS.labels("routed").inc()
            return
        # The cancellation is out before the answer, whose hold stays until the cancelled
        # generation's outcome says what it cost.
        await self._outbox.cancel(sent)
        await self._answer(work, cached, CacheStatus.SEMANTIC, holding=request.correlation_id)

    async def _claim(self, work: WorkItem) -> str:
        """Whether the cache may answer the request ("hit"), or its generation answered it,
        or (streamed) sent its first tokens, while the lookup ran ("late")."""
        request = work.request
        if self._coalescer.leader_id(work.fingerprint) != request.correlation_id:
            return "late"  # the completion stage answered it
        if request.body.stream and not await self._outbox.store.claim(
            request.tenant, request.correlation_id
        ):
            return "late"
        return "hit"

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
            replies.to_followers(first),
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
            # The answer behind that vector has expired from the exact cache, or could not be
            # read: forget() forgets it only in the first case.
            await similar.forget(scope, hit.fingerprint)
        return cached


async def fail_copies(
    coalescer: Coalescer, outbox: Outbox, work: WorkItem, error: LlmqError
) -> None:
    """Answer the copies waiting on `work` with its failure, on its route (an A/B test
    counts them in its arm), and forget the entry (also where they cannot be answered: a
    leader that will not generate holds no one)."""
    request = work.request
    failure = replies.from_error(error, request.correlation_id, request.tenant, route=work.route)
    await fail_followers(coalescer, outbox, work.fingerprint, failure)


async def fail_followers(
    coalescer: Coalescer, outbox: Outbox, fingerprint: str, failure: InferenceResult
) -> None:
    """fail_copies of a leader known by its fingerprint and its `failure` alone (its work
    unread)."""
    correlation_id = failure.correlation_id
    try:
        await until_taken(
            lambda: coalescer.settle(
                fingerprint, [], replies.to_followers(failure), outbox.reply_all
            ),
            f"the failure of {correlation_id} to its copies",
        )
    except Exception:
        log.exception("the copies of %s were not told it failed", correlation_id)
        coalescer.drop(fingerprint)
