"""Warnings that repeat for every record while a dependency is away (Redis down: each
request says the cache is unavailable) let through once per interval each, so an outage
fills no disk; the next one through says how many were held back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

EVERY_S = 10.0
MAX_KINDS = 1024
UNHELD = frozenset({"mode.redirect"})
"""Loggers never held: faust's copy of what is printed, each line a record of its own."""
DECIDED = "llmq_throttle_passes"
"""The record attribute that keeps a decision, so every handler of a logger agrees on it."""
APART = "llmq_throttle_apart"
"""The record attribute of what tells a warning apart beside its format (apart())."""


def apart(*keys: object) -> dict[str, object]:
    """`extra` for a notice that is one of its kind for each of `keys` (a model's figure
    withdrawn, a tenant's budget crossed): another model's or tenant's does not hold it."""
    return {APART: keys}


class Throttle(logging.Filter):
    """Passes each warning once per `every_s`, told apart by its logger and format string
    (not its arguments: "admitting tenant %s unchecked" is one warning for every tenant), and
    by the keys a notice names with apart(). Errors, other levels and a warning with a
    traceback always pass."""

    def __init__(self, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._every_s = every_s
        self._clock = clock
        self._seen: dict[tuple[str, str, tuple[object, ...]], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        decided: bool | None = getattr(record, DECIDED, None)
        if decided is not None:  # by this filter, on another handler
            return decided
        passes = self._passes(record)
        setattr(record, DECIDED, passes)
        return passes

    def _passes(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or record.exc_info or record.name in UNHELD:
            return True
        key = (record.name, str(record.msg), getattr(record, APART, ()))
        now = self._clock()
        if len(self._seen) >= MAX_KINDS:  # forget the kinds not seen in a while
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self._every_s}
        passed, held = self._seen.get(key, (-self._every_s, 0))
        if now - passed < self._every_s:
            self._seen[key] = (passed, held + 1)
            return False
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {now - passed:.0f} s)"
        return True


def throttle(logger: logging.Logger, every_s: float = EVERY_S) -> None:
    """Throttle what each of `logger`'s handlers writes (one Throttle for them all)."""
    shared = Throttle(every_s)
    for handler in logger.handlers:
        handler.addFilter(shared)
