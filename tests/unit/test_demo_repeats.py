"""`llmq demo --repeats`: unless given, 16 prompts sent a second time, or every prompt where
--prompts is fewer (`--prompts 8` was refused for a --repeats 16 never given)."""

from __future__ import annotations

from typing import Any

import pytest

from llmq.cli import main
from tools import demo

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("argv", "repeats"),
    [([], 16), (["--prompts", "8"], 8), (["--prompts", "8", "--repeats", "3"], 3)],
)
def test_repeats_default_to_at_most_the_prompts(
    argv: list[str], repeats: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[dict[str, Any]] = []

    def run(**wanted: Any) -> bool:  # the stack is not started
        ran.append(wanted)
        return True

    monkeypatch.setattr(demo, "run", run)
    assert main(["demo", *argv]) == 0
    [wanted] = ran
    assert wanted["repeats"] == repeats
