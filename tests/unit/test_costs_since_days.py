"""`llmq costs` takes its first day from --days or --since, never both."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmq.cli import main


def test_costs_refuses_days_with_since(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One of them would be dropped without a word, and the report cover other days."""
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing is reached
    today = datetime.now(UTC).date().isoformat()
    assert main(["costs", "--days", "3", "--since", today]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--days and --since" in line
