"""A front door that stops while Kafka is away: a cancel it owed sat in its producer, whose
stop waited for the broker, and the door never exited after SIGTERM (seen alive 255 s on).
Its close now ends (the cancels given CLOSE_CANCELS_S, the producer's flush
llmq.aio.CLOSE_FLUSH_S), saying what it left unsent, and the process exits if it does not
end within CLOSE_BOUND_S. Time is the loop's, virtual (tests/unit/clock.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway import door as door_module
from gateway.door import CLOSE_BOUND_S, STUCK, FrontDoor
from gateway.settings import GatewaySettings
from llmq.aio import AsyncClient
from schemas.catalog import Catalog
from schemas.tenants import TenantPolicy
from tests.unit.clock import run_virtual
from tests.unit.test_aio_close import KAFKA, Unreachable

pytestmark = pytest.mark.timeout(30)


class Timer:
    """llmq.deadline's timer, which would end the process: here it only says it was set."""

    def __init__(self, timeout_s: float, why: str) -> None:
        self.timeout_s, self.why = timeout_s, why
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@pytest.mark.parametrize("exits", [True, False], ids=["python-m-gateway", "in-process"])
def test_a_door_with_kafka_away_stops_within_its_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, exits: bool
) -> None:
    """The process's own door (`python -m gateway`) sets the timer that ends it; a door in
    another process (a test's, an app's) does not: its close ending the process would end
    a whole test run."""
    timers: list[Timer] = []

    def exit_after(timeout_s: float, why: str) -> Timer:
        timers.append(Timer(timeout_s, why))
        return timers[-1]

    monkeypatch.setattr(door_module, "exit_after", exit_after)
    settings = GatewaySettings(kafka_bootstrap=KAFKA, redis_url="redis://127.0.0.1:1/0")
    door = FrontDoor(settings, Catalog.builtin(), TenantPolicy.load(None), exits_when_stuck=exits)
    producer = Unreachable()

    async def run() -> None:
        client = AsyncClient(settings)
        client._producer = producer
        door.client = client
        door.cancel("default", "c1", grace=False)  # owed: it waits in the producer
        async with asyncio.timeout(10 * CLOSE_BOUND_S):  # unbounded, it ends here
            await door.close()

    with caplog.at_level(logging.WARNING):
        run_virtual(run())
    assert producer.stopping
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "stopping: 0 cancel(s) failed, 1 not sent in 10 s" in warned
    assert any(w.startswith("closing: 1 record(s) left unsent: Kafka at ") for w in warned)
    set_timers = [(t.timeout_s, t.why, t.cancelled) for t in timers]
    assert set_timers == ([(CLOSE_BOUND_S, STUCK, True)] if exits else [])
