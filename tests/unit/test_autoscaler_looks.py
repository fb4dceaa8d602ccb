"""The autoscaler's figure: withdrawn after FAILED_LOOKS_MAX failed looks in a row, so that
KEDA's fallback applies rather than a stale figure, and back with the next look; a model's
first figure is no change of its pool's size."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from autoscaler import metrics, service
from autoscaler.pools import PoolView
from autoscaler.service import Autoscaler
from autoscaler.settings import AutoscalerSettings
from schemas.lanes import Lane

pytestmark = pytest.mark.timeout(30)


class Recording:
    async def scale(self, model: str, replicas: int) -> None:
        pass


class Flaky:
    """A pool of one worker with `batch` tokens of batch work, whose looks fail while
    `failing`."""

    failing = False
    batch = 100.0

    async def look(self, model: str) -> PoolView:
        if self.failing:
            raise KafkaConnectionError("the broker is away")
        return PoolView(
            {Lane.BATCH: self.batch}, 1, 0.0, 0, 0.0, members=1, partitions=4, state="Stable"
        )


def _desired(name: str) -> float | None:
    return REGISTRY.get_sample_value("llmq_autoscaler_desired_replicas", {"model": name})


def test_failed_looks_in_a_row_withdraw_the_figure_until_a_look_succeeds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    scaler = Autoscaler(AutoscalerSettings(), Recording())
    pool = Flaky()
    monkeypatch.setattr(scaler, "_pools", pool)
    name, model = next(iter(scaler._models.items()))
    with caplog.at_level(logging.INFO, logger="autoscaler.service"):
        asyncio.run(scaler._tick(name, model))
        assert _desired(name) == 1.0
        pool.failing = True
        for _ in range(service.FAILED_LOOKS_MAX - 1):
            asyncio.run(scaler._tick(name, model))
        assert _desired(name) == 1.0  # a failed look or two keep it
        for _ in range(3):
            asyncio.run(scaler._tick(name, model))
        assert _desired(name) is None
        pool.failing = False
        for _ in range(2):
            asyncio.run(scaler._tick(name, model))
        assert _desired(name) == 1.0
    said = [r.getMessage() for r in caplog.records]
    withdrawn = f"{name}: figure withdrawn after {service.FAILED_LOOKS_MAX} failed looks"
    assert sum(line.startswith(withdrawn) for line in said) == 1
    assert said.count(f"{name}: the pool is seen again: its figure is back") == 1


def test_a_pool_never_seen_has_no_figure_to_withdraw(monkeypatch: pytest.MonkeyPatch) -> None:
    scaler = Autoscaler(AutoscalerSettings(), Recording())
    pool = Flaky()
    pool.failing = True
    monkeypatch.setattr(scaler, "_pools", pool)
    name, model = next(iter(scaler._models.items()))
    withdrawn: list[str] = []
    # prometheus-client before 0.22 raises KeyError removing a figure never set.
    monkeypatch.setattr(metrics.DESIRED, "remove", withdrawn.append)
    for _ in range(service.FAILED_LOOKS_MAX + 1):
        asyncio.run(scaler._tick(name, model))
    assert model.desired is None and withdrawn == []


def _changes(name: str, direction: str) -> float:
    labels = {"model": name, "direction": direction}
    return REGISTRY.get_sample_value("llmq_autoscaler_changes_total", labels) or 0.0


def test_the_first_figure_is_no_change_of_the_pool_size(monkeypatch: pytest.MonkeyPatch) -> None:
    scaler = Autoscaler(AutoscalerSettings(), Recording())
    pool = Flaky()
    monkeypatch.setattr(scaler, "_pools", pool)
    name, model = next(iter(scaler._models.items()))
    up, down = _changes(name, "up"), _changes(name, "down")
    asyncio.run(scaler._tick(name, model))
    assert model.desired == 1
    assert (_changes(name, "up"), _changes(name, "down")) == (up, down)
    pool.batch = 1e9  # the next figure is a change
    asyncio.run(scaler._tick(name, model))
    assert model.desired is not None and model.desired > 1
    assert (_changes(name, "up"), _changes(name, "down")) == (up + 1, down)
