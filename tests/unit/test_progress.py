"""The tools' progress bars: tqdm's bar on a terminal; in a log (a file, a pipe) plain lines,
at most one every LOG_EVERY_S, not a bar redrawn with carriage returns several times a second
(about 150 bytes a second of them in a redirected `llmq batch submit --wait`), each naming
its description once."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tools import progress
from tools.progress import Progress

pytestmark = pytest.mark.timeout(60)


def test_a_log_gets_a_line_when_it_starts_and_one_when_it_ends() -> None:
    log = io.StringIO()
    with Progress(total=100, desc="batch_1", unit="line", file=log) as bar:
        for _ in range(100):
            bar.update(1)
            bar.set_postfix(status="in_progress")  # refreshes, as `llmq batch` does
            bar.refresh()
        Progress.write("a line said meanwhile", file=log)
    first, said, last = log.getvalue().splitlines()
    assert first == "batch_1: 0/100 [00:00<?, ?line/s]" and said == "a line said meanwhile"
    assert last.startswith("batch_1: 100/100 [") and last.endswith(", status=in_progress]")
    assert "\r" not in log.getvalue()


def test_a_log_gets_a_line_at_most_every_log_every_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    log = io.StringIO()
    for _ in Progress(range(3), desc="requests", unit="req", file=log, miniters=1):
        pass
    said = log.getvalue().splitlines()
    assert said[0] == "requests: 0/3 [00:00<?, ?req/s]" and said[-1].startswith("requests: 3/3 [")
    assert len(said) > 2 and "\r" not in log.getvalue()


@pytest.mark.parametrize(
    ("given", "described", "said"),
    [
        ({"total": 5}, "s1", ["0/5 [", "s1: 5/5 ["]),  # was `s1: : 5/5 [`
        ({"total": 5, "desc": "s1"}, None, ["s1: 0/5 [", "s1: 5/5 ["]),
        ({"total": 5, "desc": "s0"}, "s1", ["s0: 0/5 [", "s1: 5/5 ["]),
        ({"total": 5}, None, ["0/5 [", "5/5 ["]),
        ({}, None, ["0/? [", "5/? ["]),  # was `: 5/? [`
    ],
)
def test_a_line_says_its_description_once(
    given: dict[str, Any], described: str | None, said: list[str]
) -> None:
    """tqdm's set_description keeps the description with ": " on its end (`llmq bench
    quality` logged `s1: : 5/5 [...]`)."""
    log = io.StringIO()
    with Progress(unit="answer", file=log, **given) as bar:
        if described is not None:
            bar.set_description(described)
        bar.update(5)
    lines = log.getvalue().splitlines()
    assert [line[: len(start)] for line, start in zip(lines, said, strict=True)] == said


def test_a_terminal_gets_tqdms_bar() -> None:
    main, side = os.openpty()
    with open(side, "w") as terminal, Progress(total=2, desc="x", file=terminal):
        terminal.flush()
        drawn = os.read(main, 4096).decode()
    os.close(main)
    assert drawn.startswith("\rx:   0%|") and "| 0/2 [" in drawn


def test_no_tool_draws_tqdms_bar_itself() -> None:
    """`llmq demo`, `llmq batch submit --wait` and the benchmarks drew it into their logs."""
    tools = Path(progress.__file__).parent
    drawn = [
        f"{path.relative_to(tools)}:{n}"
        for path in sorted(tools.rglob("*.py"))
        if path.name != "progress.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\btqdm\(", line)
    ]
    assert drawn == []
