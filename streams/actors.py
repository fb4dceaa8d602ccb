"""A fix to faust-streaming 0.15.3's agents of isolated partitions (one actor per
partition, as the dedupe and completion agents run): a revoked partition's actor is stopped
but stays in its agent's supervisor and beacon tree, and the partition assigned again gets a
new actor beside it. A stream processor sharing its partitions with others (a rollout,
`llmq local up --streams 2`) grew by about 30 KB an actor at every rebalance that moved
partitions, for good. `install` takes the revoked partitions' actors out of the supervisor
before they stop (a crash while stopping is not restarted), numbers the rest again (the
supervisor restarts a crashed actor at its number: a stale one replaced another actor or
crashed the supervisor), and out of the beacon tree once stopped."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Set
from typing import Any

from faust.agents.agent import Agent
from faust.types import TP

Revoked = Callable[[Any, Set[TP]], Awaitable[None]]


def discarding(revoked_of: Revoked) -> Revoked:
    """`Agent.on_isolated_partitions_revoked` with the revoked actors forgotten."""

    @functools.wraps(revoked_of)
    async def revoked(agent: Any, tps: Set[TP]) -> None:
        found = (agent._actor_by_partition.get(tp) for tp in tps)
        actors = [actor for actor in found if actor is not None]
        supervisor = agent.supervisor
        if supervisor is not None:
            supervisor.discard(*actors)
            supervisor._index = {actor: n for n, actor in enumerate(supervisor._services)}
        await revoked_of(agent, tps)
        for actor in actors:
            actor.beacon.detach(agent.beacon)
            actor.stream.beacon.detach(agent.beacon)

    revoked.discards = True  # type: ignore[attr-defined]
    return revoked


def install() -> None:
    """Fix faust's Agent (once; later calls change nothing)."""
    if not getattr(Agent.on_isolated_partitions_revoked, "discards", False):
        Agent.on_isolated_partitions_revoked = discarding(Agent.on_isolated_partitions_revoked)  # type: ignore[method-assign,assignment,arg-type]
