"""The `llmq` command's answer to bad input and bad settings: one line naming what is wrong
and exit status 2 (a traceback before), checked before anything is reached."""

from __future__ import annotations

import pytest

from llmq.cli import main
from tools.stack.stack import LocalStack

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (["submit", "hi", "--max-tokens", "-5"], {}, "max_tokens"),
        (["submit", "hi", "--temperature", "-1"], {}, "temperature"),
        (["submit", "hi", "--tenant", "bad tenant"], {}, "not an identifier"),
        (["topics"], {"LLMQ_MODELS_FILE": "/nonexistent.toml"}, "LLMQ_MODELS_FILE"),
        (["submit", "hi"], {"LLMQ_KAFKA_PORT": "abc"}, "LLMQ_KAFKA_PORT"),
        (["demo", "--repeats", "50"], {}, "at most --prompts (48)"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    argv: list[str],
    env: dict[str, str],
    said: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing is reached
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(LocalStack, "up", _not_started)  # checked before the stack is up
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("llmq: ") and said in line


def _not_started(*_: object) -> None:
    raise AssertionError("the local stack was started before the arguments were checked")


def test_a_count_out_of_range_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(LocalStack, "up", _not_started)
    with pytest.raises(SystemExit) as refused:
        main(["demo", "--prompts", "0"])
    assert refused.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_costs_refuses_days_it_cannot_have_before_reading_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo's century was a million hours read from Redis in one pipeline (29 s and
    900 MB for 1900); rollups are kept 400 days."""
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing is reached
    assert main(["costs", "--since", "1900-01-01"]) == 2
    assert "rollups are kept 400 days" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["costs", "--days", "0"])
    assert refused.value.code == 2


def test_an_experiment_report_refuses_options_it_would_ignore(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing is reached
    assert main(["costs", "--experiment", "e", "--plot", "x.png"]) == 2
    assert "not with --plot" in capsys.readouterr().err
