"""A warning repeated for every record passes once per interval, the next one saying how
many were held back; other warnings, and lower levels, are not held."""

from __future__ import annotations

import io
import logging

import pytest

from llmq.throttle import MAX_KINDS, Throttle, throttle
from tests.unit.clock import Clock

pytestmark = pytest.mark.timeout(30)


def record(
    msg: str, *args: object, name: str = "streams.store", level: int = logging.WARNING
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_repeated_warning_passes_once_per_interval_then_says_how_many_were_held() -> None:
    clock = Clock()
    gate = Throttle(10.0, clock)
    cache = "response cache unavailable, treating as a miss: %s"
    assert gate.filter(record(cache, "refused"))
    clock.now += 4
    assert not gate.filter(record(cache, "timeout")), "held: the same warning, other words"
    assert not gate.filter(record(cache, "refused"))
    assert gate.filter(record("result store unavailable: %s", "refused")), "another warning"
    assert gate.filter(record(cache, "x", name="streams.semantic")), "another logger"
    assert gate.filter(record(cache, "x", level=logging.INFO)), "below a warning"
    assert gate.filter(record(cache, "x", level=logging.ERROR)), "an error is never held"
    traced = record(cache, "x")
    traced.exc_info = (ValueError, ValueError("x"), None)
    assert gate.filter(traced), "nor a warning with its traceback"
    assert gate.filter(record(cache, "x", name="mode.redirect")), "nor what faust copies"
    clock.now += 6
    again = record(cache, "refused")
    assert gate.filter(again)
    assert again.getMessage() == (
        "response cache unavailable, treating as a miss: refused (2 more like it in the last 10 s)"
    )
    clock.now += 10
    quiet = record(cache, "refused")
    assert gate.filter(quiet)
    assert quiet.getMessage().endswith(": refused"), "none held since"


def test_past_max_kinds_those_not_passed_in_an_interval_are_forgotten_the_others_held() -> None:
    """A warning whose format names what varies (a tenant, a topic) is a kind each: kept for
    good, they grow a long-running process's memory. Forgotten, a kind that passed within
    the interval passes again at once."""
    clock = Clock()
    gate = Throttle(10.0, clock)
    for n in range(MAX_KINDS - 1):
        assert gate.filter(record(f"stale warning {n}"))
    clock.now += 11
    recent = "response cache unavailable, treating as a miss: %s"
    assert gate.filter(record(recent, "refused"))
    assert gate.filter(record("a new warning")), "the kinds are full: the stale ones go"
    assert not gate.filter(record(recent, "refused")), "held: it passed in this interval"
    assert len(gate._seen) == 2


def test_every_handler_of_a_logger_writes_the_same_records() -> None:
    logger = logging.getLogger("test.throttle")
    logger.propagate = False
    outs = [io.StringIO(), io.StringIO()]
    handlers = [logging.StreamHandler(out) for out in outs]
    for handler in handlers:
        logger.addHandler(handler)
    try:
        throttle(logger, every_s=60.0)
        for _ in range(5):
            logger.warning("budgets unavailable, admitting tenant %s unchecked", "t")
        assert [out.getvalue().count("budgets unavailable") for out in outs] == [1, 1]
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
