"""Two fixes to how faust-streaming 0.15.3 moves through a partition's offsets.

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

Restarts. When a table's recovery ends, faust resumes the stream partitions and only then
seeks them to their committed offsets, so records fetched in between reach the agents and
the seek rewinds the bookkeeping under them; and a partition without a committed offset is
not sought at all, keeping a position past records fetched and dropped while it was
paused. `seek_first` seeks before it resumes, such a partition to its beginning.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.types import TP

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
                for tp in tps:
                    if consumer._committed_offset[tp] is None:
                        await consumer.seek(tp, 0)
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


def install() -> None:
    """Fix faust's Consumer and Recovery (once; later calls change nothing)."""
    if not getattr(Consumer._new_offset, "guarded", False):
        Consumer._new_offset = guarded(Consumer._new_offset)  # type: ignore[method-assign,assignment]
    Consumer._add_gap = no_gap  # type: ignore[method-assign,assignment]
    if not getattr(Recovery.on_recovery_completed, "seeks_first", False):
        Recovery.on_recovery_completed = seek_first(Recovery.on_recovery_completed)  # type: ignore[method-assign,assignment]
