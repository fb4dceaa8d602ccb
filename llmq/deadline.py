"""A stop that cannot finish ends the process, saying why. The timer is a thread of its
own: the event loop may be what waits (on a broker that is away)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def exit_after(timeout_s: float, why: str) -> threading.Timer:
    """A daemon timer, started, that logs `why`, kills this process's children (a vLLM
    engine's core outlived its worker otherwise) and ends the process with status 1."""

    def expire() -> None:
        log.error("not stopped within %.0f s of the stop's start: %s", timeout_s, why)
        logging.shutdown()
        with contextlib.suppress(OSError):  # whatever /proc allows: the exit must come
            for child in _children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        os._exit(1)

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    return timer


def _children() -> list[int]:
    """This process's children (Linux's /proc; none elsewhere)."""
    listed = Path("/proc/self/task").glob("*/children")
    return [int(pid) for path in listed for pid in path.read_text().split()]
