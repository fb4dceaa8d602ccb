"""The autoscaler's figure: withdrawn once its looks failed for WITHDRAW_AFTER_S, so that
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
from llmq.throttle import APART
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


class Ticks:
    """service.time, whose monotonic clock a test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_looks_failing_for_a_while_withdraw_the_figure_until_a_look_succeeds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Fast failures (a coordinator moving as a broker restarts) at every 5 s tick keep the
    figure; looks that failed for WITHDRAW_AFTER_S withdraw it, once."""
    clock = Ticks()
    monkeypatch.setattr(service, "time", clock)
    scaler = Autoscaler(AutoscalerSettings(), Recording())
    pool = Flaky()
    monkeypatch.setattr(scaler, "_pools", pool)
    name, model = next(iter(scaler._models.items()))
    with caplog.at_level(logging.INFO, logger="autoscaler.service"):
        asyncio.run(scaler._tick(name, model, asyncio.Event()))
        assert _desired(name) == 1.0
        pool.failing = True
        failing_since = clock.now + 5
        for _ in range(3):  # within 15 s
            clock.now += 5
            asyncio.run(scaler._tick(name, model, asyncio.Event()))
        assert _desired(name) == 1.0
        clock.now = failing_since + service.WITHDRAW_AFTER_S - 1
        asyncio.run(scaler._tick(name, model, asyncio.Event()))
        assert _desired(name) == 1.0  # a second short of it
        for _ in range(3):
            clock.now += 1
            asyncio.run(scaler._tick(name, model, asyncio.Event()))
        assert _desired(name) is None
        pool.failing = False
        for _ in range(2):
            clock.now += 5
            asyncio.run(scaler._tick(name, model, asyncio.Event()))
        assert _desired(name) == 1.0
    said = [r.getMessage() for r in caplog.records]
    withdrawn = f"{name}: figure withdrawn after {service.WITHDRAW_AFTER_S:.0f}s of failed looks"
    assert sum(line.startswith(withdrawn) for line in said) == 1
    assert sum("figure withdrawn" in line for line in said) == 1
    told_apart = [getattr(r, APART, None) for r in caplog.records if r.levelno == logging.WARNING]
    assert set(told_apart) == {(name,)}, "another model's notice does not hold it back"
    assert said.count(f"{name}: the pool is seen again: its figure is back") == 1


def test_a_look_that_succeeds_starts_the_failing_time_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Ticks()
    monkeypatch.setattr(service, "time", clock)
    scaler = Autoscaler(AutoscalerSettings(), Recording())
    pool = Flaky()
    monkeypatch.setattr(scaler, "_pools", pool)
    name, model = next(iter(scaler._models.items()))
    for failing in [False, True, False, True, True]:
        pool.failing = failing
        clock.now += service.WITHDRAW_AFTER_S / 2
        asyncio.run(scaler._tick(name, model, asyncio.Event()))
    assert _desired(name) == 1.0


class Serving:
    """A busy pool of one worker: 100 records waiting, 1,000 tokens committed at each look."""

    async def look(self, model: str) -> PoolView:
        return PoolView(
            {Lane.BATCH: 1e5}, 100, 1000.0, 10, 0.0, members=1, partitions=4, state="Stable"
        )


def test_the_serving_across_failed_looks_is_not_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kafka away, the workers could neither fetch nor commit: the interval across the
    failed looks would pass for a pool serving little."""
    clock = Ticks()
    monkeypatch.setattr(service, "time", clock)
    scaler = Autoscaler(AutoscalerSettings(), Recording())
    monkeypatch.setattr(scaler, "_pools", Serving())
    name, model = next(iter(scaler._models.items()))
    measured: list[tuple[float, float]] = []

    def observe(tokens: float, records: int, seconds: float, size: int, busy: bool) -> None:
        measured.append((tokens, seconds))

    monkeypatch.setattr(model.service, "observe", observe)
    for _ in range(2):
        clock.now += 5
        asyncio.run(scaler._tick(name, model, asyncio.Event()))
    away = Flaky()
    away.failing = True
    monkeypatch.setattr(scaler, "_pools", away)
    for _ in range(6):
        clock.now += 5
        asyncio.run(scaler._tick(name, model, asyncio.Event()))
    monkeypatch.setattr(scaler, "_pools", Serving())
    for _ in range(2):
        clock.now += 5
        asyncio.run(scaler._tick(name, model, asyncio.Event()))
    assert measured == [(1000.0, 5.0), (1000.0, 5.0)]


def test_a_pool_never_seen_has_no_figure_to_withdraw(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Ticks()
    monkeypatch.setattr(service, "time", clock)
    scaler = Autoscaler(AutoscalerSettings(), Recording())
    pool = Flaky()
    pool.failing = True
    monkeypatch.setattr(scaler, "_pools", pool)
    name, model = next(iter(scaler._models.items()))
    withdrawn: list[str] = []
    # prometheus-client before 0.22 raises KeyError removing a figure never set.
    monkeypatch.setattr(metrics.DESIRED, "remove", withdrawn.append)
    for _ in range(3):
        clock.now += service.WITHDRAW_AFTER_S
        asyncio.run(scaler._tick(name, model, asyncio.Event()))
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
    asyncio.run(scaler._tick(name, model, asyncio.Event()))
    assert model.desired == 1
    assert (_changes(name, "up"), _changes(name, "down")) == (up, down)
    pool.batch = 1e9  # the next figure is a change
    asyncio.run(scaler._tick(name, model, asyncio.Event()))
    assert model.desired is not None and model.desired > 1
    assert (_changes(name, "up"), _changes(name, "down")) == (up + 1, down)
