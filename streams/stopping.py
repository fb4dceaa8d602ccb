"""A bounded stop: faust's Worker waits on SIGTERM until every record in flight is done and
committed, however long that takes. With Kafka away neither can happen (a reply cannot be
sent, an offset cannot be committed), and the process would sit out its grace period and
die by SIGKILL without a word. Past `drain_timeout_s` this one says why and exits; what
it had in flight stays uncommitted, and the next instance reads it again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from faust.worker import Worker

log = logging.getLogger(__name__)


def exit_after(timeout_s: float) -> threading.Timer:
    """A daemon timer that ends the process (exit status 1) with its reason, started."""

    def expire() -> None:
        log.error(
            "not stopped %.0f s after the signal to stop: records in flight could not finish "
            "(is Kafka away?); exiting without committing them, the next instance reads "
            "them again",
            timeout_s,
        )
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    return timer


class BoundedWorker(Worker):
    """faust's Worker whose stop on SIGTERM or SIGINT ends within `drain_timeout_s`."""

    def __init__(self, app: Any, *, drain_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.drain_timeout_s = drain_timeout_s
        self.deadline: threading.Timer | None = None

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        if self.deadline is None:
            self.deadline = exit_after(self.drain_timeout_s)
        super()._schedule_shutdown(signum)
