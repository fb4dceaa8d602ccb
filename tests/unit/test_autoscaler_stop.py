"""The autoscaler stops at once when told to, Kafka hung or not: a look in progress ends on
the stop, and no other model is looked at after it. It looked at every model first, each
look up to LOOK_TIMEOUT_S, and a SIGTERM outlived Kubernetes' grace period."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from autoscaler import service
from autoscaler.pools import PoolView
from autoscaler.service import Autoscaler
from autoscaler.settings import AutoscalerSettings
from tests.unit.clock import run_virtual

pytestmark = pytest.mark.timeout(30)

REMOTE = Path(__file__).resolve().parents[2] / "examples" / "models-remote.toml"
"""Two models."""


class Pools:
    """Pools that start, close and follow at once; their looks are the test's."""

    def __init__(self) -> None:
        self.looked: list[str] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def follow(self) -> None:
        await asyncio.Event().wait()


class Hung(Pools):
    """Every look hangs (Kafka does not answer); says when one began, and whether it ended."""

    def __init__(self) -> None:
        super().__init__()
        self.looking = asyncio.Event()
        self.ended: list[str] = []

    async def look(self, model: str) -> None:
        self.looked.append(model)
        self.looking.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.ended.append(model)


class Stopping(Pools):
    """The first look answers, and the stop comes meanwhile."""

    def __init__(self, stop: asyncio.Event) -> None:
        super().__init__()
        self.stop = stop

    async def look(self, model: str) -> PoolView:
        self.looked.append(model)
        self.stop.set()
        return PoolView({}, 0, 0.0, 0, 0.0, members=1, partitions=4, state="Stable")


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def scale(self, model: str, replicas: int) -> None:
        self.calls.append((model, replicas))


def test_a_stop_ends_a_look_that_hangs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    scaler = Autoscaler(AutoscalerSettings(models_file=REMOTE), Recording())
    pools = Hung()
    monkeypatch.setattr(scaler, "_pools", pools)

    async def run() -> float:
        stop = asyncio.Event()
        running = asyncio.create_task(scaler.run(stop))
        await pools.looking.wait()
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        stop.set()
        await running
        return loop.time() - stopped_at

    with caplog.at_level(logging.WARNING, logger="autoscaler.service"):
        took_s = run_virtual(run())
    assert took_s < service.LOOK_TIMEOUT_S  # virtual time: what the code waited, exactly
    assert pools.looked == pools.ended == [pools.looked[0]]
    assert "cannot see the pool" not in caplog.text, "a stop is no failed look"


def test_no_model_is_looked_at_once_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    actuator = Recording()
    scaler = Autoscaler(AutoscalerSettings(models_file=REMOTE), actuator)
    first, *others = scaler._models
    assert others
    stop = asyncio.Event()
    pools = Stopping(stop)
    monkeypatch.setattr(scaler, "_pools", pools)
    run_virtual(scaler.run(stop))
    assert pools.looked == [first]
    assert actuator.calls == [(first, 1)], "the look that answered is acted on"
