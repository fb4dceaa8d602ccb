"""Every service, started as a process, refuses a wrong setting, a taken port or a Kafka that
does not answer in one line that names it, with its exit code and no traceback (the stream
processor, topics of another partition count too; a worker and the autoscaler, topics not
created yet); and the front door stopped as soon as it is ready exits instead of hanging in
its stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from schemas.names import work_topics
from tools.stack.ports import free_block
from tools.stack.stack import LocalStack, healthy

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


def test_a_taken_api_port_is_named_with_exit_code_2(
    taken: int, bare: Callable[..., dict[str, str]]
) -> None:
    """The front door binds its API port before it reaches Kafka or Redis (the Kafka here
    does not answer: it is never asked)."""
    dead = f"127.0.0.1:{free_block(1)}"
    run = start("gateway", bare(LLMQ_API_PORT=str(taken), LLMQ_KAFKA_BOOTSTRAP=dead))
    line = refusal(run)
    assert run.returncode == 2
    assert f"cannot listen on 127.0.0.1:{taken} (LLMQ_API_HOST, LLMQ_API_PORT)" in line


def test_a_front_door_stopped_as_soon_as_it_is_ready_exits(
    stack: LocalStack, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGTERM right after /healthz first says ready, while its batch tasks may still be in
    their first Redis calls: uvloop once swallowed a cancel mid-connect and the stop hung
    (the front door now runs on asyncio's loop)."""
    port = free_block(1)
    log = tmp_path / "gateway.log"
    with log.open("w") as out:
        env = cli_env | {"LLMQ_API_PORT": str(port), "LLMQ_INSTANCE_ID": "gateway-stop"}
        proc = subprocess.Popen([sys.executable, "-m", "gateway"], env=env, stdout=out, stderr=out)
        try:
            wait_ready(proc, port)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    said = log.read_text()
    assert "Application shutdown complete" in said, said[-3000:]  # its lifespan's end ran
    assert code == 0, said[-3000:]  # a clean stop, though uvicorn re-raises the signal it took
    assert "front door stopped" in said, said[-3000:]
    assert "Traceback" not in said, said[-3000:]


def wait_ready(proc: subprocess.Popen[bytes], port: int) -> None:
    """Until the front door on `port` is ready, failing if it exits first."""
    deadline = time.monotonic() + 120
    while not healthy(port):
        assert proc.poll() is None, "the front door exited before it was ready"
        assert time.monotonic() < deadline, "the front door was not ready in 120 s"
        time.sleep(0.05)


def test_a_stream_processor_given_another_partition_count_is_refused_with_exit_code_2(
    stack: LocalStack, bare: Callable[..., dict[str, str]]
) -> None:
    """Its coalescing table's topics have the stack's 4: faust would have stopped at their
    first record, in a traceback (or, the count only differing from llmq.requests, run)."""
    env = bare(
        LLMQ_KAFKA_BOOTSTRAP=stack.settings.kafka_bootstrap,
        LLMQ_REDIS_URL=stack.settings.redis_url,
        LLMQ_METRICS_PORT=str(free_block(1)),
        LLMQ_PARTITIONS="8",
    )
    run = start("streams", env)
    line = refusal(run)
    assert run.returncode == 2
    assert "llmq.requests.keyed has 4 partitions, not 8" in line
    assert "llmq.completions has 4 partitions, not 8" in line


@pytest.mark.parametrize("service", ["workers", "autoscaler"])
def test_a_worker_or_autoscaler_before_its_topics_exist_is_refused_with_exit_code_1(
    stack: LocalStack, bare: Callable[..., dict[str, str]], service: str
) -> None:
    """MODELS' model has no topics on the stack, whose broker auto-creates a topic a client
    names (as Apache Kafka's default does): they are named, and still not made."""
    env = bare(
        LLMQ_KAFKA_BOOTSTRAP=stack.settings.kafka_bootstrap,
        LLMQ_REDIS_URL=stack.settings.redis_url,
        LLMQ_METRICS_PORT=str(free_block(1)),
        LLMQ_MODEL="remote",
    )
    run = start(service, env)
    line = refusal(run)
    assert run.returncode == 1
    assert f"topic(s) {', '.join(sorted(work_topics('remote')))} not found" in line
    assert "llmq topics --create" in line
    admin = KafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap)
    try:
        assert not set(work_topics("remote")) & set(admin.list_topics())
    finally:
        admin.close()


def test_llmq_topics_names_the_topics_with_fewer_replicas_than_asked(stack: LocalStack) -> None:
    """The stack's one broker gives each topic 1 replica: asked for 2, `llmq topics --create`
    exits 1 naming them (read from the broker's own metadata) and creates nothing; asked for
    1, it passes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")} | {
        "LLMQ_KAFKA_BOOTSTRAP": stack.settings.kafka_bootstrap,
        "LLMQ_MODELS_FILE": str(stack.settings.models_file),
        "LLMQ_PARTITIONS": str(stack.settings.partitions),
    }
    command = [str(Path(sys.executable).parent / "llmq"), "topics", "--create", "--timeout", "60"]
    runs = {
        replicas: subprocess.run(
            command,
            env=env | {"LLMQ_REPLICATION_FACTOR": replicas},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        for replicas in ("2", "1")
    }
    more, same = runs["2"], runs["1"]
    assert more.returncode == 1, more.stdout + more.stderr
    assert "llmq.requests has 1 replicas, LLMQ_REPLICATION_FACTOR 2" in more.stdout
    assert "created 0 of" in more.stdout
    assert same.returncode == 0, same.stdout + same.stderr
    assert "replicas" not in same.stdout
