"""The stream processor's stop on SIGTERM: it says it is not ready from the signal on (it
said 1 until the process was gone), and exits within its drain bound."""

from __future__ import annotations

import signal

import faust
import pytest
from mode.worker import Worker
from prometheus_client import REGISTRY

from streams import metrics
from streams.stopping import BoundedWorker

pytestmark = pytest.mark.timeout(30)


def test_a_stopping_stream_processor_is_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    stops: list[signal.Signals] = []
    monkeypatch.setattr(Worker, "_schedule_shutdown", lambda _, signum: stops.append(signum))
    worker = BoundedWorker(faust.App("stopping", broker="kafka://127.0.0.1:1"), drain_timeout_s=60)
    metrics.READY.set(1)
    worker._schedule_shutdown(signal.SIGTERM)
    assert worker.deadline is not None
    worker.deadline.cancel()  # the exit it would make at the drain bound
    assert stops == [signal.SIGTERM]
    assert REGISTRY.get_sample_value("llmq_streams_ready") == 0
