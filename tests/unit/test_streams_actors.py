"""The fix to faust's agents of isolated partitions (streams/actors.py): a partition
revoked and assigned again, as rebalances with another stream processor do, leaves one
actor per partition behind, not one more each time; and an actor that crashes after a
rebalance is restarted in its own place. In process: the app's broker is never reached."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import faust
import pytest
from faust.types import TP

from streams.actors import install

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
PARTITIONS = {TP("llmq.test", p) for p in range(4)}


def _with_agent(tmp_path: Path, scenario: Callable[[Any], Awaitable[T]]) -> T:
    """`scenario`'s outcome with an isolated-partition agent of a fresh app, on a loop of
    its own."""
    install()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # mode's services ask for the current loop
    app = faust.App(
        "llmq-actors-test",
        broker="kafka://127.0.0.1:1",
        web_enabled=False,
        datadir=str(tmp_path),
        loop=loop,
    )
    topic = app.topic("llmq.test", key_serializer="raw", value_serializer="raw")

    async def run(stream: Any) -> None:
        async for _ in stream.events():
            pass

    agent: Any = app.agent(topic, name="llmq.test", isolated_partitions=True)(run)

    async def started() -> T:
        await agent.maybe_start()
        await agent.on_partitions_assigned(PARTITIONS)
        try:
            return await scenario(agent)
        finally:
            await agent.stop()

    consumer: Any = app.consumer  # made by the streams, never started: its thread's loop
    try:
        return loop.run_until_complete(started())
    finally:
        gc.collect()  # with the loop still open: what is collected may ask for it
        asyncio.set_event_loop(None)
        loop.close()
        consumer._thread.thread_loop.close()


def test_rebalances_leave_one_actor_per_partition(tmp_path: Path) -> None:
    async def rebalances(agent: Any) -> list[weakref.ref[Any]]:
        gone = []
        for _ in range(10):
            gone += [weakref.ref(actor) for actor in agent._actor_by_partition.values()]
            await agent.on_partitions_revoked(PARTITIONS)
            await agent.on_partitions_assigned(PARTITIONS)
        assert len(agent.supervisor._services) == len(PARTITIONS)  # 44 before
        return gone

    gone = _with_agent(tmp_path, rebalances)
    gc.collect()
    assert [ref for ref in gone if ref() is not None] == []  # held by the agent for good


def test_after_a_rebalance_each_actor_is_restarted_at_its_own_place(tmp_path: Path) -> None:
    """The supervisor restarts a crashed actor at the number it noted: stale numbers after
    an actor before it left crashed the supervisor (IndexError: nothing was restarted
    again) or put the new actor in another's place."""

    async def rebalance(agent: Any) -> None:
        await agent.on_partitions_revoked({TP("llmq.test", 0)})
        await agent.on_partitions_assigned({TP("llmq.test", 0)})
        await agent.on_partitions_revoked({TP("llmq.test", 2)})
        supervisor = agent.supervisor
        assert supervisor._index == {actor: n for n, actor in enumerate(supervisor._services)}
        held = [actor.active_partitions for actor in supervisor._services]
        assert sorted(p.partition for [p] in held) == [0, 1, 3]

    _with_agent(tmp_path, rebalance)
