"""A bounded stop: faust's Worker waits on SIGTERM until every record in flight is done and
committed, however long that takes. With Kafka away neither can happen (a reply cannot be
sent, an offset cannot be committed), and the process would sit out its grace period and
die by SIGKILL without a word. Past `drain_timeout_s` this one says why and exits; what
it had in flight stays uncommitted, and the next instance reads it again. It is not ready
(llmq_streams_ready 0) from the signal on. (Its log handlers, set up by faust, write the
other services' lines, llmq.startup.LOG_FORMAT, and get llmq.throttle's filter.)
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from faust.worker import Worker

from llmq.deadline import exit_after
from llmq.startup import LOG_FORMAT
from llmq.throttle import throttle
from streams import metrics

WHY = (
    "records in flight could not finish (is Kafka or Redis away?); exiting without committing "
    "them, the next instance reads them again"
)
FORMATTER = {
    "()": "mode.utils.logging.ExtensionFormatter",
    "format": LOG_FORMAT,
    "no_color": True,
}
"""How faust's handlers write a line: LOG_FORMAT, without a terminal's colour codes, by its
own formatter (which keeps its tables of topics and partitions readable)."""


def logging_config() -> dict[str, Any]:
    """faust's logging with FORMATTER for both its handlers' formatters ("colored" writes to
    a stream, "default" to a file); a new dict each time, since mode pops its "merge"."""
    return {"merge": True, "formatters": {"colored": FORMATTER, "default": FORMATTER}}


class BoundedWorker(Worker):
    """faust's Worker whose stop on SIGTERM or SIGINT ends within `drain_timeout_s`, and
    whose log lines are the other services', repeating no warning per record."""

    def __init__(self, app: Any, *, drain_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, logging_config=logging_config(), **kwargs)
        self.drain_timeout_s = drain_timeout_s
        self.deadline: threading.Timer | None = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """faust's handlers, which llmq.throttle keeps from repeating a warning per record."""
        super().on_setup_root_logger(logger, level)
        throttle(logger)

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        if self.deadline is None:
            metrics.READY.set(0)
            self.deadline = exit_after(self.drain_timeout_s, WHY)
        super()._schedule_shutdown(signum)
