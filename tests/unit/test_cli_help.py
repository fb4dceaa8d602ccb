"""The `llmq` command's help: its description names every command (it named five of the
tooling's eight), and submit's and result's options say their defaults."""

from __future__ import annotations

import re
from importlib.metadata import entry_points

import pytest

from llmq.cli import COMMANDS, main, parser

pytestmark = pytest.mark.timeout(60)


def test_the_description_names_every_command() -> None:
    words = set(re.findall(r"[a-z]+", parser().description or ""))
    names = {"submit", "result", *(e.name for e in entry_points(group=COMMANDS))}
    assert names - words == set()


@pytest.mark.parametrize(
    ("command", "defaults"),
    [
        (
            "submit",
            [
                "the answer (default: 128)",
                "temperature (default: 0)",
                "sent as (default: default)",
                "waits in (default: standard)",
                "for the answer (default: 120)",
            ],
        ),
        ("result", ["tenant (default: default)", "looks once (default: 30)"]),
    ],
)
def test_the_options_say_their_defaults(
    command: str, defaults: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as shown:
        main([command, "--help"])
    assert shown.value.code == 0
    said = " ".join(capsys.readouterr().out.split())  # as one line, however wrapped
    for default in defaults:
        assert default in said


def test_local_says_what_status_exits_with(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["local", "--help"])
    assert "status (exits 3 unless every component runs and is ready)" in " ".join(
        capsys.readouterr().out.split()
    )
