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

Key = tuple[str, str]
"""(tenant, correlation_id)."""


class Cancellations:
    """The cancellations of the last `memory_s` (at most `limit` requests, oldest forgotten
    first), and the aborts of the generations running here, so that a cancelled request is
    aborted if it runs and skipped if it comes later."""

    def __init__(self, memory_s: float = 3600.0, limit: int = 100_000) -> None:
        self.memory_s = memory_s
        self._limit = limit
        self._seen: OrderedDict[Key, tuple[Cancel, ...]] = OrderedDict()
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
        self._forget_old(time.time() if now is None else now)
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

    def _forget_old(self, now: float) -> None:
        while self._seen and (
            len(self._seen) > self._limit
            or next(iter(self._seen.values()))[-1].at < now - self.memory_s
        ):
            self._seen.popitem(last=False)


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
