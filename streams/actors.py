"""A fix to faust-streaming 0.15.3's agents of isolated partitions (one actor per
partition, as the dedupe and completion agents run): a revoked partition's actor is stopped
but stays in its agent's supervisor, and the partition assigned again gets a new actor
beside it. A stream processor sharing its partitions with others (a rollout, `llmq local up
--streams 2`) grew by about 30 KB an actor at every rebalance that moved partitions, for
good. `install` has the supervisor forget the actors of the partitions revoked."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Set
from typing import Any

from faust.agents.agent import Agent
from faust.types import TP

Revoked = Callable[[Any, Set[TP]], Awaitable[None]]


def discarding(revoked_of: Revoked) -> Revoked:
    """`Agent.on_isolated_partitions_revoked`, then the stopped actors out of the supervisor."""

    @functools.wraps(revoked_of)
    async def revoked(agent: Any, tps: Set[TP]) -> None:
        actors = [agent._actor_by_partition.get(tp) for tp in tps]
        await revoked_of(agent, tps)
        for actor in actors:
            if actor is not None:
                agent.supervisor.discard(actor)
                actor.beacon.detach(agent.beacon)
                actor.stream.beacon.detach(agent.beacon)

    revoked.discards = True  # type: ignore[attr-defined]
    return revoked


def install() -> None:
    """Fix faust's Agent (once; later calls change nothing)."""
    if not getattr(Agent.on_isolated_partitions_revoked, "discards", False):
        Agent.on_isolated_partitions_revoked = discarding(Agent.on_isolated_partitions_revoked)  # type: ignore[method-assign,assignment,arg-type]
