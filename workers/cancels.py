"""Requests nobody waits for any more: the cancellations every worker reads from llmq.cancels."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from llmq.tail import since
from schemas.errors import ErrorCode, LlmqError
from schemas.names import CANCELS
from schemas.stream import Cancel
from schemas.work import WorkItem

log = logging.getLogger(__name__)

FOLLOW_AGAIN_S = (1.0, 30.0)
"""Pause before llmq.cancels is read again after a read failed: the first, doubled after each
failure in a row up to the second (a lasting failure, a right taken away, is said twice a
minute, not every second)."""

REMEMBERED = 100_000
"""Requests whose cancellations a worker remembers at most, every tenant's together (about
1 kB each: some 100 MB). Past it a tenant that holds more than its share (REMEMBERED over the
tenants remembered) forgets its oldest first, else the tenant that holds the most: one
tenant's flood (each call its client drops sends a cancel per choice) forgets only its own,
never the few of another, whose queued work would then run, billed for nobody."""

Key = tuple[str, str]
"""(tenant, correlation_id)."""


class Cancellations:
    """The cancellations of the last `memory_s` (at most `limit` requests, see REMEMBERED),
    and the aborts of the generations running here, so that a cancelled request is aborted if
    it runs and skipped if it comes later."""

    def __init__(self, memory_s: float = 3600.0, limit: int = REMEMBERED) -> None:
        self.memory_s = memory_s
        self._limit = limit
        self._seen: OrderedDict[Key, tuple[Cancel, ...]] = OrderedDict()
        """Every tenant's, oldest first."""
        self._tenants: dict[str, OrderedDict[str, None]] = {}
        """Each tenant's correlation ids in `_seen`, oldest first."""
        self._running: dict[Key, dict[str, tuple[str | None, Callable[[], None]]]] = {}
        """Per request, each generation running here: (its speculation, its abort) by run id."""

    def add(self, cancel: Cancel, now: float | None = None) -> bool:
        """Remember a cancellation and abort the generations it stops that run here (True if
        any does)."""
        key = (cancel.tenant, cancel.correlation_id)
        kind = (cancel.answered, cancel.speculation)
        kept = tuple(c for c in self._seen.get(key, ()) if (c.answered, c.speculation) != kind)
        self._seen[key] = (*kept, cancel)
        self._seen.move_to_end(key)
        held = self._tenants.setdefault(cancel.tenant, OrderedDict())
        held[cancel.correlation_id] = None
        held.move_to_end(cancel.correlation_id)
        self._forget_old(time.time() if now is None else now, cancel.tenant)
        stopped = [
            abort for sent, abort in self._running.get(key, {}).values() if cancel.stops(sent)
        ]
        for abort in stopped:
            abort()
        return bool(stopped)

    def cancelled(
        self, tenant: str, correlation_id: str, speculation: str | None = None
    ) -> Cancel | None:
        """The request's cancellation (within memory) that stops its generation sent with
        `speculation` (WorkItem.speculation), or None. A cache's answer comes first: answered
        stays answered, whatever cancels the request later."""
        stopping = [c for c in self._seen.get((tenant, correlation_id), ()) if c.stops(speculation)]
        return next((c for c in stopping if c.answered), stopping[-1] if stopping else None)

    def stopping(self, work: WorkItem) -> Cancel | None:
        """The cancellation that stops this work item's generation, or None."""
        request = work.request
        return self.cancelled(request.tenant, request.correlation_id, work.speculation)

    def running(self, work: WorkItem, run: str, abort: Callable[[], None]) -> None:
        """The work item's generation `run` (an id of its own) starts here; `abort` cuts it
        short. Two sends of one request may run at once (a resend after the stream processor
        restarted): each is stopped by its own cancellations."""
        key = (work.request.tenant, work.request.correlation_id)
        self._running.setdefault(key, {})[run] = (work.speculation, abort)

    def stopped(self, work: WorkItem, run: str) -> None:
        """The generation `run` ended."""
        key = (work.request.tenant, work.request.correlation_id)
        runs = self._running.get(key, {})
        runs.pop(run, None)
        if not runs:
            self._running.pop(key, None)

    def _forget_old(self, now: float, adding: str) -> None:
        """Forget what is older than `memory_s`, then past `limit` the oldest of `adding`
        (the tenant just added to) while it holds more than its share, else of the tenant
        that holds the most (a scan of the tenants, seldom: only a tenant within its share
        adds to a full memory)."""
        while self._seen and next(iter(self._seen.values()))[-1].at < now - self.memory_s:
            self._forget(next(iter(self._seen)))
        while len(self._seen) > self._limit:
            share = self._limit / len(self._tenants)
            tenant = adding
            if len(self._tenants.get(adding, ())) <= share:
                tenant = max(self._tenants, key=lambda t: len(self._tenants[t]))
            self._forget((tenant, next(iter(self._tenants[tenant]))))

    def _forget(self, key: Key) -> None:
        del self._seen[key]
        tenant, correlation_id = key
        held = self._tenants[tenant]
        del held[correlation_id]
        if not held:
            del self._tenants[tenant]


def cancel_error(cancel: Cancel, when: str) -> LlmqError:
    """The outcome of a generation its cancellation stopped `when`: superseded when a cache
    answered the request, cancelled when its client left."""
    if cancel.answered:
        return LlmqError(ErrorCode.SUPERSEDED, f"answered from a cache; generation stopped {when}")
    return LlmqError(ErrorCode.CANCELLED, f"the client went away; generation stopped {when}")


async def follow(consumer: AIOKafkaConsumer, cancellations: Cancellations) -> None:
    """Read llmq.cancels into `cancellations` until cancelled: every partition, from the
    cancellations of the last `memory_s` on, so a worker that (re)starts still skips work
    cancelled while it was away. The consumer is started, subscribed to llmq.cancels and
    in no group. A read that fails (a broker failing over) is said and started over after
    FOLLOW_AGAIN_S (what is read twice is remembered once): ended, it would leave the worker
    running cancelled requests to their end for the rest of its life."""
    first_s, most_s = FOLLOW_AGAIN_S
    pause_s = first_s

    def reading() -> None:
        nonlocal pause_s
        pause_s = first_s

    while True:
        try:
            await _follow(consumer, cancellations, reading)
        except Exception as exc:  # KafkaError, or RuntimeError from `assigned`
            log.warning("reading %s failed (%r); reading again in %g s", CANCELS, exc, pause_s)
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, most_s)


async def _follow(
    consumer: AIOKafkaConsumer, cancellations: Cancellations, reading: Callable[[], None]
) -> None:
    """Read from `memory_s` ago on; `reading` is told at each fetch that went (a right to
    read taken away fails the fetch, not the seek)."""
    await since(consumer, [CANCELS], time.time() - cancellations.memory_s)
    while True:
        batches = await consumer.getmany(timeout_ms=500)
        reading()
        for records in batches.values():
            for record in records:
                try:
                    cancel = Cancel.model_validate_json(record.value or b"")
                except ValidationError:
                    log.warning("skipping an unreadable record on %s", CANCELS)
                    continue
                if cancellations.add(cancel):
                    how = "answered from a cache" if cancel.answered else "cancelled"
                    log.info("%s/%s %s", cancel.tenant, cancel.correlation_id, how)
