"""The fix to faust's agents of isolated partitions (streams/actors.py): a partition
revoked and assigned again, as rebalances with another stream processor do, leaves one
actor per partition behind, not one more each time. In process: the app's broker is
never reached."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP

from streams.actors import install

pytestmark = pytest.mark.timeout(60)

PARTITIONS = {TP("llmq.test", p) for p in range(4)}


def test_rebalances_leave_one_actor_per_partition(tmp_path: Path) -> None:
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

    async def rebalances() -> list[weakref.ref[Any]]:
        await agent.maybe_start()
        await agent.on_partitions_assigned(PARTITIONS)
        gone = []
        for _ in range(10):
            gone += [weakref.ref(actor) for actor in agent._actor_by_partition.values()]
            await agent.on_partitions_revoked(PARTITIONS)
            await agent.on_partitions_assigned(PARTITIONS)
        await asyncio.sleep(0.05)
        assert len(agent.supervisor._services) == len(PARTITIONS)  # 44 before
        await agent.stop()
        return gone

    try:
        gone = loop.run_until_complete(rebalances())
        gc.collect()  # with the loop still current: what is collected may ask for it
        assert [ref for ref in gone if ref() is not None] == []  # held by the agent for good
    finally:
        asyncio.set_event_loop(None)
        loop.close()
        consumer: Any = app.consumer  # made by the streams, never started: its thread's loop
        consumer._thread.thread_loop.close()
