"""The stream processor's stop on SIGTERM: it says it is not ready from the signal on (it
said 1 until the process was gone), and exits within its drain bound, saying why; and its
log lines, which faust's Worker sets up, are the other services'."""

from __future__ import annotations

import logging
import re
import signal

import faust
import pytest
from mode.worker import Worker
from prometheus_client import REGISTRY

from llmq.startup import LOG_FORMAT
from llmq.throttle import Throttle
from streams import metrics, stopping
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


def test_a_stop_past_its_bound_names_both_what_it_waits_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The metering agent retries Redis until it answers: with Redis away, every stop ran
    to its bound and blamed Kafka alone."""
    said: list[str] = []

    def exit_after(timeout_s: float, why: str) -> None:
        said.append(why)

    monkeypatch.setattr(Worker, "_schedule_shutdown", lambda _, signum: None)
    monkeypatch.setattr(stopping, "exit_after", exit_after)
    worker = BoundedWorker(faust.App("bound", broker="kafka://127.0.0.1:1"), drain_timeout_s=60)
    worker._schedule_shutdown(signal.SIGTERM)
    [why] = said
    assert "Kafka" in why and "Redis" in why


def test_its_lines_are_the_other_services_and_still_throttled() -> None:
    """Not faust's "[time] [pid] [LEVEL]: message", which names no logger."""
    app = faust.App("format", broker="kafka://127.0.0.1:1")
    worker = BoundedWorker(app, drain_timeout_s=60, loglevel="INFO", redirect_stdouts=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        worker._setup_logging()  # as it starts: faust's handlers in place of the root's
        [handler] = root.handlers
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    record = logging.LogRecord(
        "streams.guard", logging.WARNING, __file__, 1, "hi %s", ("r1",), None
    )
    expected = logging.Formatter(LOG_FORMAT).format(record)
    assert handler.format(record) == expected
    assert re.fullmatch(r"\d{4}-\d\d-\d\d [\d:,]+ WARNING streams\.guard: hi r1", expected)
    assert any(isinstance(f, Throttle) for f in handler.filters)
