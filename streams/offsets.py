"""Fixes to how faust-streaming 0.15.3 moves through a partition's offsets.

Commits. faust commits the run of acked offsets that starts at the lowest acked one. Its
check for a record still in flight at the head of that run is off by one
(`min(acked) - committed > 1`): with the committed offset 39 in flight under agent
concurrency and 40 acked, it commits 41, and a crash or a rebalance before 39 is done
loses it (faust-streaming/faust#606, fix proposed in #707). Worse, a record faust fetched
but never handed to an agent (it drops those of a partition it holds paused, and a seek
can land under records already fetched) leaves a hole that faust fills as a "gap", acked
unread: after a kill -9 of the stream processor, a few requests and completions in each
hundred in flight were lost that way. `guarded` wraps the commit: nothing is committed
past a record in flight or over a hole, and a hole is read again from the committed offset.
faust's gaps are for topics whose offsets skip (compaction, transaction markers); llmq's
agents read none, so `install` turns them off (`no_gap`), lest a hole be filled unread.
A hole at a partition's end has no acked record after it, so no commit sees it: `Tails`
looks for a fetcher that stands past records nobody handles, and reads them again.

Restarts. When a table's recovery ends, faust resumes the stream partitions and only then
seeks them to their committed offsets, so records fetched in between reach the agents and
the seek rewinds the bookkeeping under them; and a partition without a committed offset is
not sought at all, keeping a position past records fetched and dropped while it was
paused. `seek_first` seeks before it resumes, such a partition to its log's start, which
it takes as its committed offset: with None, nothing sees a hole before its first record.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.types import TP

from llmq.throttle import apart

log = logging.getLogger(__name__)

NewOffset = Callable[[Any, TP], int | None]
RecoveryCompleted = Callable[[Any, int], Awaitable[None]]


def guarded(new_offset: NewOffset) -> NewOffset:
    """`new_offset` that answers None while the partition's lowest record in flight lies
    before every acked offset (committing the acked run would skip it), and while records
    from the committed offset on were neither acked nor in flight: those it reads again."""
    rereads: set[asyncio.Task[None]] = set()
    warned: dict[TP, int] = {}  # the hole each partition was last warned of

    @functools.wraps(new_offset)
    def _new_offset(consumer: Any, tp: TP) -> int | None:
        acked, committed = consumer._acked[tp], consumer._committed_offset[tp]
        if not acked:
            return new_offset(consumer, tp)
        pending = [
            m.offset
            for m in list(consumer._unacked_messages)
            if m.tp == tp and not m.acked and (committed is None or m.offset >= committed)
        ]
        if pending and min(pending) < min(acked):
            return None
        if committed is not None and min(acked) > committed:
            # Once per hole: while a broker is down the reread waits, and this runs at
            # every commit interval.
            level = logging.DEBUG if warned.get(tp) == committed else logging.WARNING
            warned[tp] = committed
            log.log(
                level,
                "%s[%d]: offsets %d to %d were read past unhandled; reading them again",
                tp.topic,
                tp.partition,
                committed,
                min(acked) - 1,
            )
            task = asyncio.get_running_loop().create_task(consumer.seek(tp, committed))
            rereads.add(task)
            task.add_done_callback(rereads.discard)
            return None
        return new_offset(consumer, tp)

    _new_offset.guarded = True  # type: ignore[attr-defined]
    return _new_offset


async def no_gap(consumer: Any, tp: TP, offset_from: int, offset_to: int) -> None:
    """Consumer._add_gap that notes nothing: a record read past stays a hole, for `guarded`
    to read again."""


def seek_first(on_recovery_completed: RecoveryCompleted) -> RecoveryCompleted:
    """`on_recovery_completed` whose consumer resumes the stream partitions only once they
    are sought to their committed offsets, or to their beginning when they have none (faust
    asks for the resume first, and leaves those without one where they are)."""

    @functools.wraps(on_recovery_completed)
    async def _on_recovery_completed(recovery: Any, generation_id: int = 0) -> None:
        consumer = recovery.app.consumer
        held: list[Iterable[TP]] = []
        resume, seek = consumer.resume_partitions, consumer.perform_seek

        async def seek_then_resume() -> None:
            await seek()
            while held:
                tps = set(held.pop(0))
                await _start_uncommitted(consumer, tps)
                resume(tps)

        # Shadowed on the instance for this one call, and only these two.
        consumer.resume_partitions = held.append
        consumer.perform_seek = seek_then_resume
        try:
            await on_recovery_completed(recovery, generation_id)
        finally:
            # Partitions still held were not sought (a rebalance came first, or there were
            # none): the next recovery resumes them.
            del consumer.resume_partitions, consumer.perform_seek

    _on_recovery_completed.seeks_first = True  # type: ignore[attr-defined]
    return _on_recovery_completed


Positions = Callable[[Any], Mapping[TP, int]]


def fetch_positions(consumer: Any) -> Mapping[TP, int]:
    """The next offset the consumer's fetcher hands on in each assigned partition.

    Read from aiokafka's subscription state, as faust reads its highwaters: the consumer
    thread's `position()` call waits in line behind its fetches, up to a second each.
    """
    subscription = consumer._thread._ensure_consumer()._subscription.subscription
    if subscription is None or subscription.assignment is None:
        return {}
    consumed = subscription.assignment.all_consumed_offsets()
    return {TP(tp.topic, tp.partition): at.offset for tp, at in consumed.items()}


class Tails:
    """Reads again the records at a partition's end that faust moved past unhandled.

    Check it every commit interval. A partition whose fetcher stands past its committed
    offset with nothing acked, and nothing of its topic in flight, has records that were
    fetched and dropped; seen so at two checks in a row with the same offsets (a record on
    its way to an agent is in flight by the next one), it is sought back to its committed
    offset. Any partition of the topic in flight holds it off: an agent's actors share one
    queue, and a record waiting there behind busy actors is not tracked until one takes it
    (reading it again would handle it twice).
    """

    def __init__(self, positions: Positions = fetch_positions) -> None:
        self._positions = positions
        self._suspects: dict[TP, tuple[int, int]] = {}
        """Each partition's (committed, position) seen unhandled at the last check."""

    async def check(self, consumer: Any) -> None:
        """One check of every stream partition the consumer reads."""
        if not consumer.flow_active:
            self._suspects.clear()  # a rebalance: its seek moves every partition
            return
        if consumer._commit_fut is not None:
            return  # a commit moves acked offsets to committed ones: look next time
        busy = {m.tp.topic for m in list(consumer._unacked_messages) if not m.acked}
        positions = self._positions(consumer)
        suspects: dict[TP, tuple[int, int]] = {}
        for tp in consumer.assignment():
            if consumer._is_changelog_tp(tp) or tp.topic in busy or consumer._acked.get(tp):
                continue
            committed, position = consumer._committed_offset.get(tp), positions.get(tp)
            if committed is None or position is None or position <= committed:
                continue  # None: not yet sought (seek_first gives each partition one)
            if self._suspects.get(tp) == (committed, position):
                await _read_again(consumer, tp, committed, position)
            else:
                suspects[tp] = (committed, position)
        self._suspects = suspects


async def _read_again(consumer: Any, tp: TP, committed: int, position: int) -> None:
    """Seek `tp` back to its committed offset: records up to `position` went unhandled."""
    log.warning(
        "%s[%d]: offsets %d to %d were read past unhandled at the end; reading them again",
        tp.topic,
        tp.partition,
        committed,
        position - 1,
        extra=apart(tp),
    )
    await consumer.seek(tp, committed)


async def _start_uncommitted(consumer: Any, tps: set[TP]) -> None:
    """Seek the partitions without a committed offset to their log's start, and take that
    as their committed offset: faust keeps None, under which neither it nor `guarded`
    sees a hole before the first acked record."""
    uncommitted = [tp for tp in tps if consumer._committed_offset[tp] is None]
    if not uncommitted:
        return
    starts = await consumer.earliest_offsets(*uncommitted)
    for tp in uncommitted:
        start = starts.get(tp) or 0
        await consumer.seek(tp, start)
        consumer._committed_offset[tp] = start


def install() -> None:
    """Fix faust's Consumer and Recovery (once; later calls change nothing)."""
    if not getattr(Consumer._new_offset, "guarded", False):
        Consumer._new_offset = guarded(Consumer._new_offset)  # type: ignore[method-assign,assignment]
    Consumer._add_gap = no_gap  # type: ignore[method-assign,assignment]
    if not getattr(Recovery.on_recovery_completed, "seeks_first", False):
        Recovery.on_recovery_completed = seek_first(Recovery.on_recovery_completed)  # type: ignore[method-assign,assignment]
