"""The `llmq` command against dependencies that are away or silent: one line of its own
naming what it could not reach and the variable that points there (a password masked), exit
status 1; a setting it cannot read named by its variable, exit status 2. Nothing listens on
127.0.0.1:1; a silent server is a socket that is never accepted from."""

from __future__ import annotations

import logging
import socket

import pytest

from llmq import client
from llmq.cli import main
from llmq.client import Client
from tools.batch.client import BatchApi

pytestmark = pytest.mark.timeout(60)


def test_a_front_door_that_never_answers_is_a_dependency_named_with_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A socket's read timeout is no URLError: it went silently for 120 s to `llmq: timed
    out`, status 2."""
    monkeypatch.setattr(BatchApi, "call_timeout_s", 0.2)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        monkeypatch.setenv("LLMQ_API_URL", url)
        assert main(["batch", "status", "batch_x"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"the front door at {url} did not answer within 0.2 s" in line
    assert "LLMQ_API_URL" in line


def test_the_front_doors_url_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMQ_API_URL", "http://user:secret@127.0.0.1:1/v1")
    assert main(["batch", "status", "batch_x"]) == 1
    err = capsys.readouterr().err
    assert "http://user:***@127.0.0.1:1/v1" in err and "secret" not in err


def test_topics_says_at_once_where_it_waits_for_kafka(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was silent until its deadline (120 s by default): a new user saw a hang."""
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert main(["topics", "--create", "--timeout", "0.3"]) == 1
    first, failed = capsys.readouterr().err.strip().splitlines()
    assert first == (
        "llmq topics: waiting up to 0.3 s for Kafka at 127.0.0.1:1 (the stack may be starting)"
    )
    assert failed.startswith("llmq: Kafka at 127.0.0.1:1")


@pytest.mark.parametrize("argv", [["costs"], ["costs", "--experiment", "e"]])
def test_costs_names_the_rollups_redis_masked_and_its_variable(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://user:secret@127.0.0.1:1/0")
    assert main(argv) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "llmq: the cost rollups (Redis at redis://user:***@127.0.0.1:1/0, LLMQ_REDIS_URL) "
        "are unreachable: "
    )
    assert "secret" not in line


def test_kafka_away_is_the_commands_one_line_without_its_clients_logs(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiokafka's `Unable connect` and the record limit it could not read came first."""
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(client, "CONNECT_TIMEOUT_S", 0.3)
    assert main(["submit", "hi"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("llmq: cannot connect to Kafka at 127.0.0.1:1")
    assert [r.name for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_setting_is_named_by_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMQ_PARTITIONS", "abc")
    assert main(["topics"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("llmq: LLMQ_PARTITIONS: ") and "abc" not in line


def test_a_result_not_there_in_time_is_status_1_not_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis away: the store is only read meanwhile (`_stored` takes an error as absent)."""
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(Client, "ping_store", lambda self: None)
    assert main(["result", "nope", "--timeout", "0.2"]) == 1
    assert capsys.readouterr().err.strip() == "llmq: no result for nope within 0.2s"


def test_the_command_leaves_the_loggers_as_it_found_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """It quiets the Kafka clients while it runs; a process's later work (a service's start,
    in a test after a test of the command) reads their warnings."""
    names = ("kafka", "aiokafka", "llmq.record_limits")
    before = {name: logging.getLogger(name).level for name in names}
    monkeypatch.setenv("LLMQ_PARTITIONS", "abc")
    assert main(["topics"]) == 2
    assert {name: logging.getLogger(name).level for name in names} == before
