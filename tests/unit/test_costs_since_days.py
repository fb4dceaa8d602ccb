"""`llmq costs` takes its first day from --days or --since, never both, and not one whose
first hours have expired; what it refuses, it words around the options given."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, timedelta

import pytest

from llmq.cli import main
from streams.rollups import KEEP_DAYS
from tools.costs import command


def test_costs_refuses_days_with_since(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One of them would be dropped without a word, and the report cover other days."""
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing is reached
    today = datetime.now(UTC).date().isoformat()
    assert main(["costs", "--days", "3", "--since", today]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--days and --since" in line


def test_costs_refuses_the_day_whose_first_hours_have_expired(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An hour is kept 400 days from its end: of the day 400 days ago only the last hours
    are left, and the report showed what remained of it as the whole day."""
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing is reached
    today = datetime.now(UTC).date()
    assert main(["costs", "--since", (today - timedelta(days=KEEP_DAYS)).isoformat()]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "rollups are kept 400 days from each hour's end" in line
    since = today - timedelta(days=KEEP_DAYS - 1)
    args = argparse.Namespace(days=None, since=since, until=None)
    assert command._span(args) == (since, today)


FUTURE = date(datetime.now(UTC).year + 5, 1, 1)
"""A day in the future, however long the tests run."""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--until", f"{FUTURE}"],
            f"the report's first day {FUTURE - timedelta(days=6)} (7 days by default to "
            f"--until {FUTURE}) is in the future",
        ),
        (
            ["--days", "2", "--until", f"{FUTURE}"],
            f"the report's first day {FUTURE - timedelta(days=1)} (--days 2 to --until "
            f"{FUTURE}) is in the future",
        ),
        (["--since", f"{FUTURE}"], "--since {future} is after today, {today}"),
        (["--since", f"{FUTURE}", "--until", f"{FUTURE}"], f"--since {FUTURE} is in the future"),
        (
            ["--since", f"{FUTURE}", "--until", f"{FUTURE - timedelta(days=1)}"],
            f"--since {FUTURE} is after --until {FUTURE - timedelta(days=1)}",
        ),
        (
            ["--until", "2000-01-07"],
            "the report's first day 2000-01-01 (7 days by default to --until 2000-01-07) "
            "is not after {kept}",
        ),
    ],
)
def test_a_refused_span_is_told_in_the_options_given(
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--until alone was told "--since ... is in the future", --since alone "is after
    --until" (today's date): options never given."""
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing is reached
    before = datetime.now(UTC).date()
    assert main(["costs", *args]) == 2
    days = {before, datetime.now(UTC).date()}  # a run across midnight UTC sees either
    wanted = {
        message.format(future=FUTURE, today=d, kept=d - timedelta(days=KEEP_DAYS)) for d in days
    }
    [line] = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith(f"llmq: {w}") for w in wanted), line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--days", "x"], "argument --days: 'x' is not a whole number of days"),
        (["--days", "1.5"], "argument --days: '1.5' is not a whole number of days"),
        (["--since", "2026-13-01"], "argument --since: '2026-13-01' is not a day (YYYY-MM-DD)"),
        (["--until", "tomorrow"], "argument --until: 'tomorrow' is not a day (YYYY-MM-DD)"),
    ],
)
def test_a_malformed_day_or_count_of_days_is_named(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse named the parsing function instead ("invalid _days value: 'x'") or passed
    on date's own words ("invalid fromisoformat value")."""
    with pytest.raises(SystemExit) as exited:
        main(["costs", *args])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
