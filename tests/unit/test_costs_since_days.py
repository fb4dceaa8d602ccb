"""`llmq costs` takes its first day from --days or --since, never both, and not one whose
first hours have expired."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

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
