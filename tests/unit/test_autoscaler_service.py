"""The autoscaler's tick when Kafka does not answer: the tick is skipped and said, and no
decision reaches the actuator."""

from __future__ import annotations

import asyncio
import logging

import pytest

from autoscaler import service
from autoscaler.service import Autoscaler
from autoscaler.settings import AutoscalerSettings

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
        asyncio.run(scaler._tick(name, model))
    assert actuator.calls == []
    assert f"cannot see the pool of {name} this tick" in caplog.text
