"""The `llmq` command's settings, each refused by its own variable and never shown: an API key
read with its newline is used without it, and one a header cannot carry is refused naming
LLMQ_API_KEY (the header's error printed the key whole); a bad variable of the local stack
is named alone (LLMQ_MAX_REPLICAS, never set, was blamed beside it)."""

from __future__ import annotations

import os

import pytest

from llmq.cli import main
from llmq.settings import ClientSettings

pytestmark = pytest.mark.timeout(60)

SECRET = "llmq-SECRETkey"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LLMQ_* variable of the surrounding shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("LLMQ_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LLMQ_API_URL", "http://127.0.0.1:1/v1")  # nothing is reached


@pytest.mark.parametrize("given", [f"{SECRET}\n", f"  {SECRET}\r\n", f"\t{SECRET} "])
def test_an_api_key_is_read_as_the_door_reads_it(
    given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMQ_API_KEY", given)
    key = ClientSettings().api_key
    assert key is not None and key.get_secret_value() == SECRET


@pytest.mark.parametrize("given", [" ", "\n"])
def test_a_blank_api_key_is_none(given: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_API_KEY", given)
    assert ClientSettings().api_key is None


@pytest.mark.parametrize("given", [f"{SECRET}\u20ac", f"{SECRET}\x01", "llmq-SEC\nRETkey"])
def test_an_api_key_no_header_can_carry_is_refused_by_its_variable_unshown(
    given: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMQ_API_KEY", given)
    assert main(["batch", "status", "batch_x"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("llmq: LLMQ_API_KEY: ") and "printable ASCII" in line
    assert "SEC" not in line


@pytest.mark.parametrize(
    ("name", "value"),
    [("LLMQ_STREAMS", "9"), ("LLMQ_MIN_REPLICAS", "x"), ("LLMQ_MIN_REPLICAS", "20")],
)
def test_a_bad_local_stack_variable_is_named_alone(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(name, value)
    assert main(["local", "status"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"llmq: {name}: ") and ";" not in line
