"""A guard on faust's offset commits: never past a record an agent still processes.

faust-streaming 0.15.3 commits the run of acked offsets that starts at the lowest acked
one. Its check for a record still in flight at the head of that run is off by one
(`min(acked) - committed > 1`): with the committed offset 39 in flight under agent
concurrency and 40 acked, it commits 41, and a crash or a rebalance before 39 is done
loses it (faust-streaming/faust#606, fix proposed in #707). llmq's admission and metering
agents run with concurrency, so `install()` wraps the method: while a tracked record of
the partition is not acked yet and every acked offset lies beyond it, nothing is committed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

NewOffset = Callable[[Any, TP], int | None]


def guarded(new_offset: NewOffset) -> NewOffset:
    """`new_offset` that answers None while the partition's lowest record in flight lies
    before every acked offset (committing the acked run would skip it)."""

    @functools.wraps(new_offset)
    def _new_offset(consumer: Any, tp: TP) -> int | None:
        acked, committed = consumer._acked[tp], consumer._committed_offset[tp]
        pending = [
            m.offset
            for m in list(consumer._unacked_messages)
            if m.tp == tp and not m.acked and (committed is None or m.offset >= committed)
        ]
        if acked and pending and min(pending) < min(acked):
            return None
        return new_offset(consumer, tp)

    _new_offset.guarded = True  # type: ignore[attr-defined]
    return _new_offset


def install() -> None:
    """Guard faust's Consumer (once; later calls change nothing)."""
    if not getattr(Consumer._new_offset, "guarded", False):
        Consumer._new_offset = guarded(Consumer._new_offset)  # type: ignore[method-assign,assignment]
