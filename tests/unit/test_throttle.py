"""A warning repeated for every record passes once per interval, the next one saying how
many were held back; other warnings, and lower levels, are not held."""

from __future__ import annotations

import io
import logging

import pytest

from llmq.throttle import APART, MAX_KINDS, Throttle, apart, throttle
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


def test_a_notice_told_apart_by_its_keys_passes_for_each_and_is_held_for_each() -> None:
    """Three models' figures withdrawn in one tick are three notices (one format): each one
    passes, and each is held as a repeated warning is."""
    clock = Clock()
    gate = Throttle(10.0, clock)
    withdrawn = "%s: figure withdrawn after %.0fs of failed looks"

    def notice(model: str) -> logging.LogRecord:
        said = record(withdrawn, model, 120.0)
        for key, value in apart(model).items():
            setattr(said, key, value)
        return said

    assert [gate.filter(notice(m)) for m in ("a", "b", "c")] == [True, True, True]
    assert not gate.filter(notice("a")), "held: the same model's again"
    assert gate.filter(record(withdrawn, "a", 120.0)), "one told apart by nothing is another"
    assert getattr(notice("x"), APART) == ("x",)


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
