"""Stage 3, llmq.completions: escalate, fall back or retry, else fill the caches and answer."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Protocol

from pydantic import BaseModel, ValidationError

from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.fingerprint import fingerprint
from schemas.metering import MeteringEvent
from schemas.names import COMPLETIONS
from schemas.redact import describe, explain
from schemas.request import RecordRefusedError
from schemas.result import ErrorInfo
from schemas.retry import RetryPolicy
from schemas.route import Route
from schemas.work import Completion, UnsureAnswer, WorkItem
from streams import metrics, replies
from streams.budget import hold_until
from streams.coalesce import Coalescer, Waiter, shared_terms
from streams.dedupe import Similar, fail_copies, fail_followers
from streams.guard import Guard, failure_of
from streams.outbox import Outbox
from streams.refusals import Refusals
from streams.retries import final_failure, retry_of
from streams.router import may_escalate, next_route
from streams.salvage import work_requester
from streams.semantic import semantic_key

log = logging.getLogger(__name__)

_ENDED_FOR_ITS_OWN = frozenset({ErrorCode.CANCELLED, ErrorCode.EXPIRED})
"""Why a generation ended that concerns its leader alone: copies still waiting promote one
of their own to lead a new one."""
UNSERVED_SAID_EVERY_S = 60.0
"""How often, at most, the log says again that a model to hand work on to has no worker."""


class Served(Protocol):
    """Whether a worker serves any of the models now, or will once its pool grows again
    (llmq.serving.Serving)."""

    async def serves(self, models: list[str]) -> bool: ...


class _Metered(BaseModel):
    """The one field of a completion read where the whole cannot be: its cost."""

    metering: MeteringEvent | None = None


class Complete:
    """Turns each completion into the results of the leader and of every coalesced copy.

    Runs as one actor per partition, beside Dedupe, on the same coalescing table.
    """

    def __init__(
        self,
        catalog: Catalog,
        outbox: Outbox,
        coalescer: Coalescer,
        similar: Similar | None,
        retry: RetryPolicy,
        *,
        served: Served | None = None,
    ) -> None:
        self._catalog = catalog
        self._retry = retry
        self._served = served
        self._unserved_said: dict[str, float] = {}
        self._outbox = outbox
        self._refusals = Refusals(outbox)
        self._guard = Guard(self._refusals)
        self._coalescer = coalescer
        self._similar = similar
        self._adding: set[asyncio.Task[None]] = set()

    async def on_completion(self, key: bytes | None, value: bytes | None) -> None:
        """One record of llmq.completions; never raises (see Guard)."""
        await self._guard.run(
            COMPLETIONS, key, value, lambda: self._complete(key, value), work_requester
        )

    async def _complete(self, key: bytes | None, value: bytes | None) -> None:
        try:
            completion = Completion.model_validate_json(value or b"")
        except ValidationError as exc:
            # The request was valid and may well have been answered: retriable, as a worker
            # answers a work item it cannot read.
            error = LlmqError(
                ErrorCode.INTERNAL_ERROR,
                f"unreadable completion ({describe(exc)}), probably written by a newer llmq: "
                "upgrade the stream processors after the workers and before the front doors",
            )
            await self._unreadable(key, value, error)
            return
        try:
            await self._conclude(key, value, completion)
        except Exception as exc:
            # The Guard answers the leader; the copies waiting on this generation share its
            # failure (the record is not read again: nobody would answer them).
            work = completion.work
            if self._coalescer.leader_id(work.fingerprint) == work.request.correlation_id:
                await fail_copies(self._coalescer, self._outbox, work, failure_of(exc))
            else:
                # Another leads the copies: they are no longer handed back to this generation.
                self._coalescer.ended(work.fingerprint, work.request.correlation_id)
            raise

    async def _unreadable(self, key: bytes | None, value: bytes | None, error: LlmqError) -> None:
        """Dead-letter a completion this version cannot read (its work written by a newer
        llmq, say) and answer whoever work_requester finds in it, releasing its hold once the
        cost it carries is settled; where that cost cannot be read, the hold stays until it
        expires, so that the budget admits nothing into room the generation spent. The
        copies waiting on it (the record's key is their fingerprint) share its failure."""
        try:
            event, release = _Metered.model_validate_json(value or b"").metering, True
        except ValidationError:
            event, release = None, False
        if self._outbox.ledger is not None:
            await self._outbox.ledger.settle(event)
        why = work_requester(error, value)
        await self._refusals.reject(COMPLETIONS, key, value, why, release)
        fingerprint, cid = (key or b"").decode(errors="replace"), why.correlation_id
        if cid is None or why.tenant is None:
            return
        if self._coalescer.leader_id(fingerprint) == cid:
            failure = replies.from_error(error, cid, why.tenant, route=why.route)
            await fail_followers(self._coalescer, self._outbox, fingerprint, failure)
        else:  # another leads the copies: not handed back to this generation
            self._coalescer.ended(fingerprint, cid)

    async def _conclude(
        self, key: bytes | None, value: bytes | None, completion: Completion
    ) -> None:
        # 0) What the generation cost counts against the tenant's budget before anything else
        #    (an answer releases the request's hold).
        if self._outbox.ledger is not None:
            await self._outbox.ledger.settle(completion.metering)
        # 1) A speculative generation the semantic cache answered: its request is answered,
        #    what it cost is counted, and it releases the hold the cache's answer left;
        #    unless the request leads another send of it (resent after a restart of this
        #    stage): that one's outcome releases it.
        if completion.error is not None and completion.error.code is ErrorCode.SUPERSEDED:
            work = completion.work
            leader = self._coalescer.leader(work.fingerprint)
            resent = (
                leader is not None
                and leader.correlation_id == work.request.correlation_id
                and leader.send != work.speculation
            )
            if self._outbox.ledger is not None and not resent:
                await self._outbox.ledger.release(replies.from_completion(completion))
            return
        # 2) Another model or another attempt takes it over: whoever waits keeps waiting.
        kept = await self._hand_on_or_keep(completion)
        if kept is None:
            return
        completion = kept
        # 3) An escalation that ended without an answer (expired, failed for good) answers
        #    with the unsure one it replaced; else a failure for good goes to the DLQ and the
        #    app gets it.
        unsure = _unsure_instead(completion)
        if unsure is not None:
            completion = unsure
        else:
            completion = await self._failed_for_good(key, value, completion)
        # 4) Answer the leader and every follower, and fill the caches: not with an unsure
        #    answer, one that stood in or one that could not escalate (its deadline passed,
        #    the next tier has no worker, its record would be too large), nor with that of a
        #    model standing in for one whose engine failed (Route.failed_over), a passing
        #    condition. A later copy may.
        would_escalate = completion.error is None and (
            next_route(completion, self._catalog) is not None
        )
        keep = (
            unsure is None
            and not would_escalate
            and not completion.work.route.failed_over
            and completion.response is not None
            and completion.work.request.cacheable
            and self._of_this_catalog(completion)  # a fingerprint: only where it matters
        )
        await self._answer(completion, keep=keep)

    def _of_this_catalog(self, completion: Completion) -> bool:
        """Whether the answer is of the models as this process's catalog has them: from a
        worker started with its model's settings (Completion.model_digest), for work admitted
        under them (its fingerprint, Catalog.cache_scope). While new weights roll out under
        the same name, an old worker's answer, or one to work admitted before, answers its
        request and copies but is not cached under the new settings."""
        work = completion.work
        spec = self._catalog.get(work.model)
        if spec is None or completion.model_digest not in (None, spec.digest):
            return False
        return work.fingerprint == fingerprint(work.request, self._catalog.cache_scope(work.route))

    async def _hand_on_or_keep(self, completion: Completion) -> Completion | None:
        """None when the work was sent on (_hand_on); else the completion to answer: as it
        came, or a failure saying why where its work is past what the next topic takes (an
        unsure answer stands)."""
        try:
            if await self._hand_on(completion):
                return None
        except RecordRefusedError as refused:
            if completion.error is not None:
                return completion.model_copy(update={"error": ErrorInfo.from_error(refused)})
        return completion

    async def _hand_on(self, completion: Completion) -> bool:
        """Send the work on when the answer is too unsure (cascade) or the model failed
        (fallback) and the request is still wanted, to a model a worker serves
        (_next_route); when another attempt at the same model may succeed (retry, perhaps
        on another replica); or when its client left, or its deadline passed or ruled out
        the fallback or retry, while copies wait (promote). True if it was. An escalation
        carries the answer it replaces (WorkItem.unsure), which stands where the escalation
        ends without one (_unsure_instead).

        A generation whose pieces were streamed (or an earlier one's: WorkItem.shown) is
        taken over only by one that would say the same, a retry of a deterministic request
        (greedy or seeded) on the same model: its client's reader checks that the answer
        starts with what it showed. Another model's answer or a sampled one would not, so its
        failure is the answer, at once (an app asks again under a new id).

        A completion read again whose work was handed on already (_send_on's mark) is done,
        whatever it would decide now: later, a retry's budget or the deadline may have passed,
        and answering its failure would release the hold the running hand-on needs. (Only a
        failure or a cascade's answer is ever handed on: no other pays the look.)"""
        work = completion.work
        request, store = work.request, self._outbox.store
        may_have = completion.error is not None or work.route.cascade
        if may_have and await store.handed_on(request.tenant, request.correlation_id, _step(work)):
            return True
        shown = completion.streamed or work.shown
        taken = await self._taken_over(completion, shown)
        if taken is not None:
            await self._send_on(work, *taken)
            return True
        return await self._promote(completion, shown)

    async def _taken_over(self, completion: Completion, shown: bool) -> tuple[WorkItem, str] | None:
        """The work that takes the generation over, and how (escalated, fell_back, retried),
        while its request's deadline lets it; None when none may (_hand_on). Another model's
        attempts and retry budget are its own."""
        work = completion.work
        route = None if shown or work.request.expired() else await self._next_route(completion)
        if route is not None:
            rerouted = work.model_copy(
                update={
                    "model": route.current,
                    "route": route,
                    "attempt": 1,
                    "first_failed_at": None,
                    "not_before": None,
                    "may_escalate": may_escalate(route, self._catalog),
                    "spent_usd": completion.spent_usd,
                    "unsure": _unsure_of(completion) or work.unsure,
                }
            )
            return rerouted, "escalated" if route.escalated else "fell_back"
        same = not shown or work.request.body.deterministic
        retry = retry_of(completion, self._retry) if same else None
        if retry is None:
            return None
        retried = retry.model_copy(update={"spent_usd": completion.spent_usd, "shown": shown})
        return retried, "retried"

    async def _send_on(self, work: WorkItem, item: WorkItem, how: str) -> None:
        """Send `item` to take over the generation of `work`, once however often its
        completion is read: read again (a crash or a rebalance before its offset was
        committed), a second send would generate again after the first one's answer released
        the request's hold, at a cost no hold covers. Marked (Store.mark_handed_on) for as
        long as the hold lives (budget.hold_until); a repeat of the request, sent anew, is
        another generation (`sent_at`), handed on as its own."""
        request, store = work.request, self._outbox.store
        await self._outbox.work(item)
        metrics.REROUTES.labels(how).inc()
        # Marked once sent, not before: a crash in between sends it again when the completion
        # is read again (a duplicate generation), where marking first would lose it (the
        # request never answered), which is worse.
        until = hold_until(request.deadline, time.time())
        await store.mark_handed_on(request.tenant, request.correlation_id, _step(work), until)

    async def _next_route(self, completion: Completion) -> Route | None:
        """next_route, past the models no worker serves (`served`): work sent to one would
        wait in its topic with nobody to take it. An unsure answer whose escalation has no
        worker stands; a failure falls back to the next model that has one, if any."""
        unserved: set[str] = set()
        while (route := next_route(completion, self._catalog, unserved)) is not None:
            if self._served is None or await self._served.serves([route.current]):
                return route
            unserved.add(route.current)
            self._say_unserved(route.current, completion)
        return None

    def _say_unserved(self, model: str, completion: Completion) -> None:
        """Log that `model` has no worker, once per model per UNSERVED_SAID_EVERY_S: every
        request routed to it would say so."""
        now = time.monotonic()
        if now - self._unserved_said.get(model, -math.inf) < UNSERVED_SAID_EVERY_S:
            return
        self._unserved_said[model] = now
        if completion.error is None:
            log.info("no worker serves %s: unsure answers that would escalate to it stand", model)
        else:
            log.info("no worker serves %s: failures fall back past it", model)

    async def _failed_for_good(
        self, key: bytes | None, value: bytes | None, completion: Completion
    ) -> Completion:
        """A generation that failed for good goes to the DLQ (its record, `key` and `value`)
        and answers as "failed after N attempts"; any other completion as it is."""
        failure = final_failure(completion)
        if failure is None:
            return completion
        await self._outbox.dead_letter(COMPLETIONS, key, value, failure)
        log.warning(
            "%s failed for good on %s after %d attempt(s) (%s): dead-lettered",
            completion.work.request.correlation_id,
            completion.work.model,
            completion.work.attempt,
            failure.code.value,
        )
        return completion.model_copy(update={"error": ErrorInfo.from_error(failure)})

    async def _answer_first(self, completion: Completion, ended: bool) -> None:
        """The reply of the request whose copies lead anew: a failure that did not end for
        its own request (cancelled, expired) is final for it, as with no copies waiting."""
        if not ended:
            record, key = completion.model_dump_json().encode(), completion.work.fingerprint
            completion = await self._failed_for_good(key.encode(), record, completion)
        reply_to = completion.work.request.reply_to
        await self._outbox.reply(reply_to, replies.from_completion(completion))

    async def _promote(self, completion: Completion, shown: bool) -> bool:
        """A generation whose client went away (cancelled) or whose deadline passed while
        copies wait on it, or whose fallback or retry its own deadline alone ruled out: the
        request gets its reply, copies past their own deadline are told so, and the copy
        whose deadline comes last (Coalescer.successor) leads a new generation (that fallback
        or retry, under its deadline) that answers it and the rest. True if one did."""
        error, work = completion.error, completion.work
        if error is None or not work.request.cacheable:
            return False
        if error.code is not ErrorCode.CANCELLED and work.unsure is not None:
            return False  # the unsure answer it carries answers the copies too (_unsure_instead)
        fingerprint = work.fingerprint
        if self._coalescer.leader_id(fingerprint) != work.request.correlation_id:
            return False  # nobody waits on this generation
        # The copy whose deadline comes last, expired or not: the one that leads where any may.
        waiter = self._coalescer.successor(fingerprint)
        ended = error.code in _ENDED_FOR_ITS_OWN
        taken = None if waiter is None else await self._taken_by(completion, waiter, shown)
        if ended or taken is not None:
            await self._expire_waiters(fingerprint, work.route)
        if waiter is None or taken is None:
            return False
        await self._answer_first(completion, ended)
        lane, deadline = shared_terms(
            self._coalescer.waiters(fingerprint, 0, self._coalescer.followers(fingerprint))
        )
        request = work.request.model_copy(
            update={
                "correlation_id": waiter.correlation_id,
                "tenant": waiter.tenant,
                "reply_to": waiter.reply_to,
                "created_at": waiter.created_at,
                "lane": lane,
                "deadline": deadline,
            }
        )
        promoted = {
            "request": request,
            "admitted_at": time.time(),
            "spent_usd": 0.0,
            "speculation": None,
        }
        try:
            await self._outbox.work(taken.model_copy(update=promoted))
        except Exception as exc:
            # Past what its lane's topic takes, or not sent: the copies get why (the first
            # request has its reply).
            if not isinstance(exc, RecordRefusedError):
                log.exception("the copies of %s lost their new leader", waiter.correlation_id)
            failure = replies.from_error(
                failure_of(exc), waiter.correlation_id, waiter.tenant, route=work.route
            )
            await self._coalescer.settle(
                fingerprint, [], replies.to_followers(failure), self._outbox.reply_all
            )
            return True
        # Only now that its work is in Kafka: a crash before leaves the first leader, and
        # this completion, read again, promotes again (a second generation answers twice).
        self._coalescer.promote(fingerprint, waiter, lane)
        metrics.REROUTES.labels("promoted").inc()
        return True

    async def _taken_by(
        self, completion: Completion, waiter: Waiter, shown: bool
    ) -> WorkItem | None:
        """The work `waiter` would lead in place of the generation, within its own deadline:
        anew where that one ended for its own request (cancelled, expired; its retries'
        budget was spent), else the fallback or retry its own deadline ruled out; None when
        none may."""
        work = completion.work
        mine = work.request.model_copy(update={"deadline": waiter.deadline})
        if completion.error is not None and completion.error.code in _ENDED_FOR_ITS_OWN:
            fresh = {"attempt": 1, "not_before": None, "first_failed_at": None}
            return None if mine.expired() else work.model_copy(update=fresh)
        own = work.request.deadline
        if own is None or (mine.deadline is not None and mine.deadline <= own):
            return None  # its deadline is no later: what ruled the hand-on out rules it out too
        theirs = completion.model_copy(update={"work": work.model_copy(update={"request": mine})})
        taken = await self._taken_over(theirs, shown)
        return None if taken is None else taken[0]

    async def _expire_waiters(self, fingerprint: str, route: Route) -> None:
        """Copies whose deadline passed while they waited are told so (on the `route` of the
        generation they waited on), and leave the list: a generation led anew would answer
        them late and set its lane by them."""
        gone = self._coalescer.expired(fingerprint)
        if not gone:
            return
        await self._outbox.reply_all([(w.reply_to, replies.expired(w, route=route)) for w in gone])
        self._coalescer.leave(fingerprint, gone)

    async def _answer(self, completion: Completion, *, keep: bool = True) -> None:
        """Reply to the request and to every copy coalesced with it, then forget it; `keep`:
        an answer fills the exact and semantic caches."""
        work = completion.work
        request = work.request
        result = replies.from_completion(completion)
        metrics.COMPLETIONS.labels(result.status).inc()
        first = [(request.reply_to, result)]
        if not request.cacheable:
            await self._outbox.reply_all(first)
            return
        # Fill the exact cache before the entry goes, so a copy arriving later hits it.
        kept = completion.response if keep else None
        if kept is not None:
            await self._outbox.store.cache(work.fingerprint, kept)
        # The copies waiting on another request's generation (one that took this one over,
        # or a cache answered this one) are not answered by this one's failure, nor, where
        # that one streams, those that stream (they may be showing its pieces), nor handed
        # back to this one, now ended. Those that do not stream take its answer.
        leader = self._coalescer.leader(work.fingerprint)
        if (
            leader is not None
            and leader.correlation_id != request.correlation_id
            and (completion.response is None or leader.stream)
        ):
            self._coalescer.ended(work.fingerprint, request.correlation_id)
            taking = [] if completion.response is None else self._unstreamed(work.fingerprint)
            await self._outbox.reply_all([*first, *map(replies.to_followers(result), taking)])
            self._coalescer.leave(work.fingerprint, taking)
        else:
            followers = await self._coalescer.settle(
                work.fingerprint,
                first,
                replies.to_followers(result),
                self._outbox.reply_all,
            )
            metrics.COALESCED.observe(followers)
        # Teach the semantic cache the question, without holding up the next completion.
        if kept is not None:
            self._remember(completion)

    def _unstreamed(self, fingerprint: str) -> list[Waiter]:
        """The followers of `fingerprint` that do not stream."""
        count = self._coalescer.followers(fingerprint)
        return [w for w in self._coalescer.waiters(fingerprint, 0, count) if not w.stream]

    def _remember(self, completion: Completion) -> None:
        """Add the question to the semantic cache in the background: its embedding takes
        milliseconds that the completions behind this one should not wait for, and a lost
        add (a crash) costs only a future hit. The cache embeds one question at a time, so a
        burst of answers does not take every core from the requests that follow."""
        work = completion.work
        key_text = semantic_key(work.request, self._catalog.cache_scope(work.route))
        if self._similar is None or key_text is None:
            return
        task = asyncio.create_task(self._similar.add(*key_text, work.fingerprint))
        self._adding.add(task)
        task.add_done_callback(self._added)

    def _added(self, task: asyncio.Task[None]) -> None:
        """An addition ended: one that failed (its embedder) is said, not left unread."""
        self._adding.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("the semantic cache did not learn a question: %s", explain(exc))


def _step(work: WorkItem) -> str:
    """The generation `work` is (its route's step, its attempt, its send): what a mark of its
    hand-on names (Complete._send_on)."""
    return f"{len(work.route.tried)}.{work.attempt}@{work.sent_at!r}"


def _unsure_of(completion: Completion) -> UnsureAnswer | None:
    """The answer an escalation replaces, for its work to carry; None for a failure."""
    if completion.error is not None or completion.response is None:
        return None
    return UnsureAnswer(
        model=completion.work.model,
        response=completion.response,
        mean_logprob=completion.mean_logprob,
    )


def _unsure_instead(completion: Completion) -> Completion | None:
    """An escalation that ended expired or failed for good, answered instead with the unsure
    answer its work carries (WorkItem.unsure): an unsure answer is better than none, and the
    same one past the deadline would have stood. Its cost stays counted (spent_usd); the
    route still says it escalated. None for an answer, a cancellation (its client left) or
    work that carries none."""
    error, work = completion.error, completion.work
    if error is None or error.code is ErrorCode.CANCELLED or work.unsure is None:
        return None
    log.info(
        "the escalation of %s to %s ended %s: the unsure answer of %s stands",
        work.request.correlation_id,
        work.model,
        error.code.value,
        work.unsure.model,
    )
    return completion.model_copy(
        update={
            "work": work.model_copy(update={"model": work.unsure.model}),
            "response": work.unsure.response,
            "error": None,
            "mean_logprob": work.unsure.mean_logprob,
        }
    )
