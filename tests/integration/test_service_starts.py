"""Every service, started as a process, refuses a wrong setting, a taken port or a Kafka that
does not answer in one line that names it, with its exit code and no traceback; and the
front door whose port is taken exits instead of hanging in its stop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tools.stack.ports import free_block
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SERVICES = ["streams", "workers", "gateway", "autoscaler"]
MODELS = """
default = "remote"

[[models]]
name = "remote"
engine = "openai"
url = "http://127.0.0.1:9/v1"
"""
"""A catalog whose model needs no checkpoint: the worker gets to Kafka without one."""


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def start(service: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m service` until it exits (a service that starts instead fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", service],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def bare(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """This environment without the caller's LLMQ_* settings, with MODELS, plus settings."""
    models = tmp_path / "models.toml"
    models.write_text(MODELS, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}

    def environment(**settings: str) -> dict[str, str]:
        return env | {"LLMQ_MODELS_FILE": str(models)} | settings

    return environment


def refusal(run: subprocess.CompletedProcess[str]) -> str:
    """The one line saying why the service did not start (none else says it; no traceback)."""
    said = run.stdout + run.stderr
    assert "Traceback" not in said, said[-3000:]
    lines = [line for line in said.splitlines() if "cannot start" in line]
    assert len(lines) == 1, said[-3000:]
    return lines[0]


@pytest.mark.parametrize("service", SERVICES)
def test_a_wrong_setting_is_named_with_exit_code_2(
    service: str, bare: Callable[..., dict[str, str]]
) -> None:
    run = start(service, bare(LLMQ_LOG_LEVEL="LOUD", LLMQ_METRICS_PORT="70000"))
    line = refusal(run)
    assert run.returncode == 2
    assert "LLMQ_LOG_LEVEL:" in line and "LLMQ_METRICS_PORT:" in line
    assert "LOUD" not in line and "70000" not in line, "values are not shown"


@pytest.mark.parametrize("service", SERVICES)
def test_a_kafka_that_does_not_answer_is_named_with_exit_code_1(
    service: str, bare: Callable[..., dict[str, str]]
) -> None:
    dead = f"127.0.0.1:{free_block(1)}"
    run = start(service, bare(LLMQ_KAFKA_BOOTSTRAP=dead))
    line = refusal(run)
    assert run.returncode == 1
    assert f"cannot reach Kafka at {dead} (PLAINTEXT)" in line
    assert "Connect call failed" in line or "Connection refused" in line, "the client's reason"


@pytest.mark.parametrize("service", SERVICES)
def test_a_taken_metrics_port_is_named_with_exit_code_2(
    service: str, taken: int, bare: Callable[..., dict[str, str]]
) -> None:
    run = start(service, bare(LLMQ_METRICS_PORT=str(taken)))
    line = refusal(run)
    assert run.returncode == 2
    assert f"cannot serve /metrics on 127.0.0.1:{taken}" in line


def test_a_front_door_whose_port_is_taken_exits(
    stack: LocalStack, cli_env: dict[str, str], taken: int
) -> None:
    """It connects to Kafka and Redis, then cannot listen: its stop cancels its batch tasks,
    which a Redis connect under uvloop once swallowed, so it hung there for ever."""
    run = start("gateway", cli_env | {"LLMQ_API_PORT": str(taken)})
    said = run.stdout + run.stderr
    assert run.returncode != 0, said[-3000:]  # uvicorn's code for a failed start (3)
    assert "address already in use" in said
