"""Coalescing: identical requests in flight share one generation.

The state lives in a faust table keyed by fingerprint (changelog-backed, so it survives a
restart of the stream processor). Requests and completions are keyed by fingerprint, so
every copy of a request and its completion meet on the partition that owns the entry.

One entry per generation plus one per follower keeps every changelog record small, however
many copies pile up: `<fp>` -> Leader, `<fp>/<n>` -> Waiter for the n-th follower.

A table write reaches the changelog at once, before the work it announces is in Kafka: a
process that dies in between leaves a leader whose generation never started. Its request
is redelivered (its offset was not committed), finds its own entry, and leads again when
the entry was written by another process (`epoch`). A leader whose handling is cancelled (a
SIGTERM, a revoked partition) is `abandon`ed, not dropped: its followers' records were
committed long ago, and its own record, redelivered perhaps to this very process, leads
again for them.

A leader keeps the lane its generation runs on, and whether it streams: a copy on a more
urgent lane does not wait behind that lane's backlog, nor a streamed copy on a generation
that shows no pieces, but leads a generation of its own for the followers too, as over a
stale leader; unless that generation streams (its followers may be showing its pieces).
The generation it replaces still answers its own request; whichever of the two answers
first answers the followers too, but for a failure of the replaced one, or its answer where
the one that took over streams: those are its own request's alone (streams.complete). A
copy that took over so and then fails to lead (its work not sent, say) hands the followers
back to the replaced one, unless that one's generation ended meanwhile.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, MutableMapping, Sequence
from typing import Self

from pydantic import BaseModel, ConfigDict

from schemas.lanes import Lane
from schemas.request import InferenceRequest
from schemas.result import InferenceResult

Reply = tuple[str | None, InferenceResult]
"""A result and the topic it goes to (None: the result store only)."""


class Waiter(BaseModel):
    """What a follower needs to get its own reply, or to lead a generation of its own when
    its leader's client left: its id, tenant, reply topic, clock, lane and deadline."""

    model_config = ConfigDict(frozen=True)

    correlation_id: str
    tenant: str
    reply_to: str | None
    created_at: float
    lane: Lane = Lane.STANDARD
    deadline: float | None = None
    stream: bool = False
    """It streams: it may be showing its generation's pieces (False in an entry written
    before the field)."""

    @classmethod
    def from_request(cls, request: InferenceRequest) -> Self:
        """The follower's side of a request."""
        return cls(
            correlation_id=request.correlation_id,
            tenant=request.tenant,
            reply_to=request.reply_to,
            created_at=request.created_at,
            lane=request.lane,
            deadline=request.deadline,
            stream=request.body.stream,
        )


def shared_terms(waiters: Sequence[Waiter]) -> tuple[Lane, float | None]:
    """The lane and deadline of one generation that answers every one of `waiters`: the most
    urgent lane, and the latest deadline (None when one has none)."""
    lane = min((w.lane for w in waiters), key=lambda lane: lane.priority)
    deadlines = [w.deadline for w in waiters]
    return lane, None if None in deadlines else max(d for d in deadlines if d is not None)


class Leader(BaseModel):
    """The generation in flight for one fingerprint, how many followers wait on it, and the
    stream-processor process that sent its work."""

    model_config = ConfigDict(frozen=True)

    correlation_id: str
    since: float
    followers: int = 0
    epoch: str = ""
    """The process that wrote it; "" (no process's) for an abandoned leader."""
    lane: Lane = Lane.BATCH
    """The lane its generation runs on. An entry written before leaders kept it reads as
    batch: a more urgent copy leads its own generation rather than risk waiting on it."""
    stream: bool = False
    """Whether its generation streams its pieces: a streamed copy of one that does not leads
    its own (it would show nothing until the whole answer). An entry written before leaders
    kept it reads as not streamed."""
    replaced: Leader | None = None
    """The live leader this one took over (one on a less urgent lane, or one that does not
    stream), while its generation may still answer: the followers go back to it if this one
    fails to lead (`hand_back`). One deep: its own `replaced` is not kept."""

    @property
    def send(self) -> str:
        """Which send of its work this is: a resend (a redelivered request after a restart,
        or a stale one led anew) makes an entry of its own (WorkItem.speculation)."""
        return f"{self.epoch}@{self.since!r}"


class Coalescer:
    """Leader election and the follower lists, on a dict-like table of bytes.

    Every method is synchronous on purpose: between the check and the write there is no
    await, so two copies handled by the same process can never both become leaders.
    """

    def __init__(
        self,
        table: MutableMapping[bytes, bytes],
        stale_after_s: float,
        epoch: str | None = None,
    ) -> None:
        self._table = table
        self._stale_after_s = stale_after_s
        self.epoch = epoch or uuid.uuid4().hex
        """This process's mark on the leaders it writes (a fresh one per process)."""

    def join(self, request: InferenceRequest, fingerprint: str, now: float | None = None) -> bool:
        """Follow the generation in flight for `fingerprint`: True, or False when there is
        none (or it is stale, or it is this very request's and another process wrote it or
        it was abandoned, or it does not stream and runs on a less urgent lane than this
        request's or this request streams), in which case this request is now the leader.
        A generation that streams is followed whatever the lane: its followers may be showing
        its pieces, which another generation's answer would not continue."""
        now = time.time() if now is None else now
        key = fingerprint.encode()
        raw = self._table.get(key)
        leader = None if raw is None else Leader.model_validate_json(raw)
        if (
            leader is None
            or now - leader.since > self._stale_after_s
            or (leader.correlation_id == request.correlation_id and leader.epoch != self.epoch)
            or (request.lane.priority < leader.lane.priority and not leader.stream)
            or (request.body.stream and not leader.stream)
        ):
            # A stale leader's generation is presumed lost, and so is the one of a redelivered
            # leader whose process died or that was abandoned: lead anew, keep the followers.
            # One on a less urgent lane would keep this request behind that lane's backlog
            # (a batch one, hours), and one that does not stream would show a streamed copy
            # nothing until its end: the same, while it still answers its own request.
            followers = 0 if leader is None else leader.followers
            new = Leader(
                correlation_id=request.correlation_id,
                since=now,
                followers=followers,
                epoch=self.epoch,
                lane=request.lane,
                stream=request.body.stream,
                replaced=self._live(leader, request, now),
            )
            self._table[key] = new.model_dump_json().encode()
            return False
        self._table[_follower_key(fingerprint, leader.followers)] = (
            Waiter.from_request(request).model_dump_json().encode()
        )
        updated = leader.model_copy(update={"followers": leader.followers + 1})
        self._table[key] = updated.model_dump_json().encode()
        return True

    def _live(self, leader: Leader | None, request: InferenceRequest, now: float) -> Leader | None:
        """The live leader that `request`, leading in place of `leader`, may hand the
        followers back to: `leader` itself unless stale, or, where `leader` is the request's
        own earlier entry, the one that entry kept."""
        if leader is None or now - leader.since > self._stale_after_s:
            return None
        if leader.correlation_id == request.correlation_id:
            return leader.replaced
        return leader.model_copy(update={"replaced": None})

    def leader(self, fingerprint: str) -> Leader | None:
        """The generation in flight for `fingerprint`, if any."""
        raw = self._table.get(fingerprint.encode())
        return None if raw is None else Leader.model_validate_json(raw)

    def leader_id(self, fingerprint: str) -> str | None:
        """The correlation_id of the request whose generation is in flight for
        `fingerprint`, if any (another than a given one's: a cache answered that one)."""
        leader = self.leader(fingerprint)
        return None if leader is None else leader.correlation_id

    def successor(self, fingerprint: str) -> Waiter | None:
        """The waiting follower to lead in place of a leader that went away (cancelled) or
        ran out of time: the one whose deadline comes last (none: last of all), the first
        such, so that its budget hold lasts as long as the generation it leads may run;
        None when nobody waits. Followers past their deadline may be among them: the caller
        tells them (`expired`) where it leads anew."""
        waiters = self.waiters(fingerprint, 0, self.followers(fingerprint))
        if not waiters:
            return None
        return max(waiters, key=lambda w: math.inf if w.deadline is None else w.deadline)

    def expired(self, fingerprint: str, now: float | None = None) -> list[Waiter]:
        """The followers whose deadline passed while they waited."""
        now = time.time() if now is None else now
        waiters = self.waiters(fingerprint, 0, self.followers(fingerprint))
        return [w for w in waiters if w.deadline is not None and w.deadline <= now]

    def leave(self, fingerprint: str, waiters: Collection[Waiter]) -> None:
        """Those followers leave the list: they were answered apart."""
        for n in range(self.followers(fingerprint)):
            key = _follower_key(fingerprint, n)
            raw = self._table.get(key)
            if raw is not None and Waiter.model_validate_json(raw) in waiters:
                del self._table[key]

    def promote(
        self, fingerprint: str, waiter: Waiter, lane: Lane, now: float | None = None
    ) -> None:
        """`waiter` leads the generation in place of the leader, leaving the list of
        followers (so it is not answered twice), on the `lane` its work was sent on.
        Written once its work is sent: a crash before leaves the old leader, whose
        redelivered completion promotes again."""
        leader = self.leader(fingerprint)
        if leader is None:
            return
        for n in range(leader.followers):
            key = _follower_key(fingerprint, n)
            raw = self._table.get(key)
            if raw is not None and Waiter.model_validate_json(raw) == waiter:
                del self._table[key]
                break
        new = leader.model_copy(
            update={
                "correlation_id": waiter.correlation_id,
                "since": time.time() if now is None else now,
                "epoch": self.epoch,
                "lane": lane,
            }
        )
        self._table[fingerprint.encode()] = new.model_dump_json().encode()

    def followers(self, fingerprint: str) -> int:
        """How many followers have joined the generation in flight (0 when there is none)."""
        raw = self._table.get(fingerprint.encode())
        return 0 if raw is None else Leader.model_validate_json(raw).followers

    def waiters(self, fingerprint: str, start: int, stop: int) -> list[Waiter]:
        """The followers numbered start..stop-1."""
        found = (self._table.get(_follower_key(fingerprint, n)) for n in range(start, stop))
        return [Waiter.model_validate_json(w) for w in found if w is not None]

    def abandon(self, fingerprint: str, correlation_id: str) -> None:
        """The handling of the leader `correlation_id` was cancelled, its work perhaps not
        sent: its entry is marked no process's (epoch ""), so that its request, redelivered
        (its offset was not committed) even to this process, leads again, keeping the
        followers. Dropped, they would never be answered: their records were committed."""
        leader = self.leader(fingerprint)
        if leader is None or leader.correlation_id != correlation_id:
            return
        abandoned = leader.model_copy(update={"epoch": ""})
        self._table[fingerprint.encode()] = abandoned.model_dump_json().encode()

    def hand_back(self, fingerprint: str, correlation_id: str) -> bool:
        """The leader `correlation_id` failed to lead: the followers go back to the live
        leader it took over (`Leader.replaced`), whose generation may still answer them,
        rather than share a failure of its own. False where it leads no more, or replaced
        none still live."""
        leader = self.leader(fingerprint)
        if leader is None or leader.correlation_id != correlation_id or leader.replaced is None:
            return False
        back = leader.replaced.model_copy(update={"followers": leader.followers})
        self._table[fingerprint.encode()] = back.model_dump_json().encode()
        return True

    def ended(self, fingerprint: str, correlation_id: str) -> None:
        """The generation of `correlation_id` ended without answering the followers (another
        leader took them over): they are no longer handed back to it, where nobody would
        answer them."""
        leader = self.leader(fingerprint)
        if leader is None or leader.replaced is None:
            return
        if leader.replaced.correlation_id == correlation_id:
            kept = leader.model_copy(update={"replaced": None})
            self._table[fingerprint.encode()] = kept.model_dump_json().encode()

    def drop(self, fingerprint: str) -> None:
        """Forget the generation and its followers."""
        key = fingerprint.encode()
        raw = self._table.get(key)
        if raw is None:
            return
        for n in range(Leader.model_validate_json(raw).followers):
            self._table.pop(_follower_key(fingerprint, n), None)
        del self._table[key]

    async def settle(
        self,
        fingerprint: str,
        first: Sequence[Reply],
        for_waiter: Callable[[Waiter], Reply],
        reply_all: Callable[[Sequence[Reply]], Awaitable[None]],
    ) -> int:
        """Answer the leader (`first`) and every follower, then forget the entry.

        The entry is dropped only after every reply is acknowledged, so a crash in between
        answers them again after the restart (at-least-once) instead of losing them.
        Copies that join while replies are in flight are answered too. Returns the number
        of followers answered.
        """
        replies, answered = first, 0
        while True:
            await reply_all(replies)
            joined = self.followers(fingerprint)
            if joined <= answered:
                # No await between this check and the drop: nobody can join in between.
                self.drop(fingerprint)
                return answered
            replies = [for_waiter(w) for w in self.waiters(fingerprint, answered, joined)]
            answered = joined


def _follower_key(fingerprint: str, n: int) -> bytes:
    return f"{fingerprint}/{n}".encode()
