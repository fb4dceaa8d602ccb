"""A worker sent SIGTERM while its engine loads (the autoscaler stopping a replica still
starting) stops once it has loaded, without joining its consumer group: the join and the
leave were two rebalances for every other worker of the pool."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from schemas.catalog import Catalog
from workers import __main__ as worker_process
from workers.settings import WorkerSettings

pytestmark = pytest.mark.timeout(30)


class Loaded:
    """An engine that loaded; what the worker did with it at the end."""

    def __init__(self) -> None:
        self.aborted = self.shut = False

    async def abort_all(self) -> None:
        self.aborted = True

    def shutdown(self) -> None:
        self.shut = True


def test_a_worker_stopped_while_its_engine_loads_never_joins_its_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def joined(*_: Any) -> None:
        raise AssertionError("it made its Kafka clients, to join its group")

    monkeypatch.setattr(worker_process, "kafka_clients", joined)
    monkeypatch.setattr(worker_process, "exit_after", lambda *_: None)  # no deadline timer
    engine = Loaded()

    def make_engine() -> Any:
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop once loading returns
        return engine

    spec = Catalog.builtin().get(Catalog.builtin().default)
    assert spec is not None
    asyncio.run(worker_process.serve(WorkerSettings(), spec, make_engine))
    assert engine.aborted and engine.shut
