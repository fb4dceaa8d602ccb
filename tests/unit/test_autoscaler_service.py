"""The autoscaler's tick: when Kafka does not answer the tick is skipped and said, and no
decision reaches the actuator; a figure that stays is said again now and then."""

from __future__ import annotations

import asyncio
import logging

import pytest

from autoscaler import service
from autoscaler.pools import PoolView
from autoscaler.service import Autoscaler
from autoscaler.settings import AutoscalerSettings
from llmq.groups import DEAD, EMPTY
from schemas.lanes import Lane

pytestmark = pytest.mark.timeout(30)


class Hung:
    """A pool view that never comes (a Kafka call that hangs)."""

    async def look(self, model: str) -> None:
        await asyncio.Event().wait()


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def scale(self, model: str, replicas: int) -> None:
        self.calls.append((model, replicas))


def test_a_look_that_hangs_skips_the_tick_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(service, "LOOK_TIMEOUT_S", 0.05)
    actuator = Recording()
    scaler = Autoscaler(AutoscalerSettings(), actuator)
    monkeypatch.setattr(scaler, "_pools", Hung())
    name, model = next(iter(scaler._models.items()))
    with caplog.at_level(logging.WARNING, logger="autoscaler.service"):
        asyncio.run(scaler._tick(name, model, asyncio.Event()))
    assert actuator.calls == []
    assert f"cannot see the pool of {name} this tick" in caplog.text


class Still:
    """A pool that looks the same at every look: one worker, a little batch work."""

    async def look(self, model: str) -> PoolView:
        return PoolView(
            {Lane.BATCH: 100.0}, 1, 0.0, 0, 0.0, members=1, partitions=4, state="Stable"
        )


@pytest.mark.parametrize(("every_s", "said"), [(0.0, 3), (1e9, 1)])
def test_an_unchanged_figure_is_said_again_now_and_then(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    every_s: float,
    said: int,
) -> None:
    monkeypatch.setattr(service, "SAY_EVERY_S", every_s)
    actuator = Recording()
    scaler = Autoscaler(AutoscalerSettings(), actuator)
    monkeypatch.setattr(scaler, "_pools", Still())
    name, model = next(iter(scaler._models.items()))
    with caplog.at_level(logging.INFO, logger="autoscaler.service"):
        for _ in range(3):
            asyncio.run(scaler._tick(name, model, asyncio.Event()))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{name}: ")]
    assert len(lines) == said
    assert " replicas: " in lines[0] and ": still " not in lines[0]
    assert all(f"{name}: still 1 replicas: " in line for line in lines[1:])
    assert actuator.calls == [(name, 1)] * 3


class AtZero:
    """A pool without workers or work, whose group is in `state`."""

    def __init__(self, state: str) -> None:
        self.state = state

    async def look(self, model: str) -> PoolView:
        return PoolView({}, 0, 0.0, 0, 0.0, members=0, partitions=4, state=self.state)


@pytest.mark.parametrize(("state", "replicas"), [(DEAD, 1), (EMPTY, 0)])
def test_a_pool_at_zero_is_woken_only_if_its_group_is_gone(
    monkeypatch: pytest.MonkeyPatch, state: str, replicas: int
) -> None:
    """Gone (Dead), the front door refuses the model, so only a worker makes it again;
    kept (Empty), the first record wakes the pool."""
    actuator = Recording()
    scaler = Autoscaler(AutoscalerSettings(min_replicas=0), actuator)
    monkeypatch.setattr(scaler, "_pools", AtZero(state))
    name, model = next(iter(scaler._models.items()))
    asyncio.run(scaler._tick(name, model, asyncio.Event()))
    assert actuator.calls == [(name, replicas)]


class Dying(Still):
    """A pool whose reader dies of the unexpected once, then reads on."""

    def __init__(self) -> None:
        self.follows = 0
        self.again = asyncio.Event()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def follow(self) -> None:
        self.follows += 1
        if self.follows == 1:
            raise AttributeError("'NoneType' object has no attribute 'decode'")
        self.again.set()
        await asyncio.Event().wait()


def test_a_reader_that_dies_is_said_and_started_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Unseen, a dead reader would freeze the arrivals and the backlog's weights."""
    monkeypatch.setattr(service, "READ_AGAIN_S", 0.0)
    scaler = Autoscaler(AutoscalerSettings(autoscaler_tick_s=0.01), Recording())
    pool = Dying()
    monkeypatch.setattr(scaler, "_pools", pool)

    async def run() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(scaler.run(stop))
        await asyncio.wait_for(pool.again.wait(), 5)
        stop.set()
        await running

    with caplog.at_level(logging.ERROR, logger="autoscaler.service"):
        asyncio.run(run())
    assert pool.follows == 2
    assert "reading the work topics failed, starting again" in caplog.text
