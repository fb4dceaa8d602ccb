"""A service that cannot start says why in one line and exits 2 (configuration) or 1 (Kafka):
a Redis URL redis-py cannot read, an empty path, the front door's two ports alike, a front
door, worker, autoscaler or stream processor whose topics were not created, and Kafka lost
(or a topic missing) between the start-up check and the service's own clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from pydantic_settings import BaseSettings

from autoscaler import __main__ as autoscaler_process
from gateway import __main__ as gateway_process
from gateway.door import FrontDoor
from gateway.settings import GatewaySettings
from llmq import startup
from llmq.startup import CONFIGURATION, UNREACHABLE, StartError, read_settings
from schemas.lanes import Lane
from schemas.names import (
    BATCH_RESULTS,
    CANCELS,
    DEFAULT_PARTITIONS,
    DLQ,
    REQUESTS,
    RESULTS,
    TOKENS,
    topic_plan,
    work_topic,
    work_topics,
)
from streams import __main__ as streams_process
from streams.settings import StreamSettings
from workers import __main__ as worker_process
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
REMOTE = ROOT / "examples" / "models-remote.toml"
"""Two models; remote-large's worker starts no vLLM."""
PLAN = [spec.name for spec in topic_plan(["smollm2-135m", "remote-large"], DEFAULT_PARTITIONS)]
"""Every topic `llmq topics --create` makes for REMOTE."""
DOOR_TOPICS = [REQUESTS, CANCELS, RESULTS, TOKENS, BATCH_RESULTS]
"""What the front door publishes (requests, cancels) and reads (results, tokens, batch
replies)."""
DEAD_KAFKA = "127.0.0.1:1"
"""Nothing listens there: a connection is refused at once."""
MISSING_TOPIC = (
    "topic(s) llmq.results not found within 30 s: is the stack up, and were its topics "
    "created (llmq topics --create)?"
)
"""llmq.tail's error, word for word."""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LLMQ_* variable of the surrounding shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("LLMQ_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    "url",
    [
        "localhost:6379",  # no scheme
        "redis://cache:abc/0",  # a port that is no number
        "redis://user:hunter2/0",  # a password where the port goes
        "redis://:hunter2@cache:6379/0?socket_timeout=soon",  # an option redis-py parses
        "redis://:hunter2@cache:6379/0?socket_timout=2",  # an option it does not know
    ],
)
@pytest.mark.parametrize("cls", [GatewaySettings, StreamSettings, WorkerSettings])
def test_a_redis_url_redis_py_cannot_read_is_a_refusal_to_fix(
    monkeypatch: pytest.MonkeyPatch, cls: type[BaseSettings], url: str
) -> None:
    monkeypatch.setenv("LLMQ_REDIS_URL", url)
    with pytest.raises(StartError) as refused:
        read_settings(cls)
    assert refused.value.code == CONFIGURATION
    assert str(refused.value).startswith("LLMQ_REDIS_URL: ")
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://cache:6379/2",
        "rediss://user:hunter2@cache:6380/0?ssl_ca_certs=/etc/ca.pem&socket_timeout=2",
        "unix:///run/redis.sock?db=1",
    ],
)
def test_a_redis_url_redis_py_reads_is_taken_without_connecting(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("LLMQ_REDIS_URL", url)
    assert read_settings(WorkerSettings).redis_url == url


@pytest.mark.parametrize(
    "main",
    [gateway_process.main, streams_process.main, worker_process.main, autoscaler_process.main],
)
def test_every_service_refuses_a_bad_redis_url_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, main: Callable[[], int]
) -> None:
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://:hunter2@cache:6379/0?socket_timeout=soon")
    monkeypatch.setattr(startup, "reach_kafka", _never)
    assert main() == CONFIGURATION
    assert "LLMQ_REDIS_URL: " in caplog.text
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("LLMQ_TENANTS_FILE", GatewaySettings),
        ("LLMQ_TENANTS_FILE", StreamSettings),
        ("LLMQ_MODELS_FILE", WorkerSettings),
        ("LLMQ_MODELS_FILE", GatewaySettings),
        ("LLMQ_CACHE_DIR", WorkerSettings),
    ],
)
def test_an_empty_path_is_named_as_empty(
    monkeypatch: pytest.MonkeyPatch, name: str, cls: type[BaseSettings]
) -> None:
    """Not the working directory ("cannot read tenants file .: Is a directory")."""
    monkeypatch.setenv(name, "")
    with pytest.raises(StartError) as refused:
        read_settings(cls)
    assert refused.value.code == CONFIGURATION
    assert str(refused.value) == f"{name}: Value error, is empty; name a path, or unset it"


def test_the_front_doors_metrics_port_must_not_be_its_api_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not "cannot listen on 127.0.0.1:38124": its own /metrics server took the port first."""
    monkeypatch.setenv("LLMQ_API_PORT", "38124")
    monkeypatch.setenv("LLMQ_METRICS_PORT", "38124")
    with pytest.raises(StartError) as refused:
        read_settings(GatewaySettings)
    assert refused.value.code == CONFIGURATION
    assert "LLMQ_METRICS_PORT is LLMQ_API_PORT" in str(refused.value)
    monkeypatch.setenv("LLMQ_METRICS_PORT", "38125")
    assert read_settings(GatewaySettings).metrics_port == 38125


def test_the_front_door_refuses_in_one_line_when_kafka_is_lost_after_the_check(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not uvicorn's lifespan traceback and exit code 3."""
    _front_door_on_a_free_port(monkeypatch)
    assert gateway_process.main() == UNREACHABLE
    said = f"cannot start the front door: cannot reach Kafka at {DEAD_KAFKA} (PLAINTEXT): "
    assert said in caplog.text
    assert "Traceback" not in caplog.text


def test_the_front_door_refuses_in_one_line_when_a_topic_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def start(self: FrontDoor) -> None:
        raise RuntimeError(MISSING_TOPIC)

    _front_door_on_a_free_port(monkeypatch)
    monkeypatch.setattr(FrontDoor, "start", start)
    assert gateway_process.main() == UNREACHABLE
    assert f"cannot start the front door: {MISSING_TOPIC}" in caplog.text


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (KafkaConnectionError("Unable to bootstrap"), f"cannot reach Kafka at {DEAD_KAFKA}"),
        (RuntimeError(MISSING_TOPIC), MISSING_TOPIC),
    ],
)
def test_the_autoscaler_refuses_in_one_line_when_its_reader_cannot_start(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
    said: str,
) -> None:
    async def run(*args: Any) -> None:
        raise failure

    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", DEAD_KAFKA)
    monkeypatch.setattr(startup, "reach_kafka", _nothing)
    monkeypatch.setattr(autoscaler_process, "_run", run)
    assert autoscaler_process.main() == UNREACHABLE
    assert f"cannot start the autoscaler: {said}" in caplog.text


def test_the_stream_processor_refuses_in_one_line_when_kafka_is_lost_after_the_check(
    tmp_path: Path,
) -> None:
    """Not faust's traceback. Its own process: faust's Worker takes over signals, logging,
    the working directory and the event loop."""
    probe = (
        "from llmq import startup; startup.reach_kafka = lambda *a, **k: {};"
        "from streams.__main__ import main; raise SystemExit(main())"
    )
    env = {
        **os.environ,
        "LLMQ_KAFKA_BOOTSTRAP": DEAD_KAFKA,
        "LLMQ_DATA_DIR": str(tmp_path),
        "LLMQ_SEMANTIC_CACHE": "false",
    }
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    said = f"cannot start the stream processor: cannot reach Kafka at {DEAD_KAFKA} (PLAINTEXT): "
    assert done.returncode == UNREACHABLE, done.stderr
    assert said in done.stderr
    assert "Traceback" not in done.stderr


def test_a_worker_refuses_to_start_before_its_topics_exist(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its consumer would have the broker auto-create them, one partition each: a pool of one
    worker, and every later `llmq topics --create` refused for their count."""
    missing = work_topics("remote-large")[1:]
    asked = _cluster(monkeypatch, [topic for topic in PLAN if topic not in missing])
    _remote_worker(monkeypatch, _never)
    assert worker_process.main() == UNREACHABLE
    said = f"cannot start the worker: topic(s) {', '.join(sorted(missing))} not found at "
    assert said in caplog.text
    assert "create them with `llmq topics --create`" in caplog.text
    assert asked == [None], "every topic listed: naming one would auto-create it"


def test_a_worker_starts_once_the_topics_of_its_model_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[str] = []

    async def serve(settings: WorkerSettings, *args: Any) -> None:
        served.append(settings.model or "")

    _cluster(monkeypatch, [topic for topic in PLAN if topic not in work_topics("smollm2-135m")])
    _remote_worker(monkeypatch, serve)
    assert worker_process.main() == 0
    assert served == ["remote-large"]


def test_the_autoscaler_refuses_to_start_before_every_models_topics_exist(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    missing = work_topic("smollm2-135m", Lane.BATCH)
    asked = _cluster(monkeypatch, [topic for topic in PLAN if topic != missing])
    monkeypatch.setenv("LLMQ_MODELS_FILE", str(REMOTE))
    monkeypatch.setattr(autoscaler_process, "_run", _never)
    assert autoscaler_process.main() == UNREACHABLE
    said = f"cannot start the autoscaler: topic(s) {missing} not found at "
    assert said in caplog.text
    assert asked == [None]


def test_the_autoscaler_starts_once_every_models_topics_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[bool] = []

    async def run(*args: Any) -> None:
        ran.append(True)

    _cluster(monkeypatch, PLAN)
    monkeypatch.setenv("LLMQ_MODELS_FILE", str(REMOTE))
    monkeypatch.setattr(autoscaler_process, "_run", run)
    assert autoscaler_process.main() == 0
    assert ran == [True]


@pytest.mark.parametrize("missing", DOOR_TOPICS)
def test_the_front_door_refuses_to_start_before_its_topics_exist(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, missing: str
) -> None:
    """Its clients would have the broker auto-create the topic, one partition: the topics job
    then refused its count (on Kubernetes the door may start first), and the install stayed
    broken. It exits instead, and is started again until the topics exist."""
    asked = _cluster(monkeypatch, [topic for topic in PLAN if topic != missing])
    _front_door_on_a_free_port(monkeypatch, checked=False)
    monkeypatch.setattr(gateway_process, "_start_and_serve", _never)
    assert gateway_process.main() == UNREACHABLE
    said = f"cannot start the front door: topic(s) {missing} not found at "
    assert said in caplog.text
    assert "create them with `llmq topics --create`" in caplog.text
    assert asked == [None], "every topic listed: naming one would auto-create it"


def test_the_front_door_starts_once_its_own_topics_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    """No work topic, nor any other it does not use, is asked of it."""
    served: list[bool] = []

    async def serve(*args: Any) -> None:
        served.append(True)

    _cluster(monkeypatch, DOOR_TOPICS)
    _front_door_on_a_free_port(monkeypatch, checked=False)
    monkeypatch.setattr(gateway_process, "_start_and_serve", serve)
    assert gateway_process.main() == 0
    assert served == [True]


@pytest.mark.parametrize(
    "missing",
    [
        [REQUESTS],  # an agent's: the broker would make it as the agent subscribes
        [DLQ, work_topic("remote-large", Lane.BATCH)],  # sent to: faust would make them
    ],
)
def test_the_stream_processor_refuses_to_start_before_its_topics_exist(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, missing: list[str]
) -> None:
    """Made with a count of their own, and the topics Job, which comes later, refused it:
    the install stayed broken."""
    asked = _cluster(monkeypatch, [topic for topic in PLAN if topic not in missing])
    monkeypatch.setenv("LLMQ_MODELS_FILE", str(REMOTE))
    monkeypatch.setattr(streams_process, "build", _never)
    assert streams_process.main() == UNREACHABLE
    said = f"cannot start the stream processor: topic(s) {', '.join(sorted(missing))} not found "
    assert said in caplog.text
    assert "create them with `llmq topics --create`" in caplog.text
    assert asked == [None], "every topic listed: naming one would auto-create it"


def test_the_stream_processor_starts_once_its_topics_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """llmq.batch-results is an app's reply topic to it (the front door's), made as replies
    come: not needed; nor is its table's changelog, which faust makes."""

    class BuiltError(Exception):
        """Raised in place of building the app: the start-up checks passed."""

    def build(settings: StreamSettings) -> None:
        raise BuiltError

    _cluster(monkeypatch, [topic for topic in PLAN if topic != BATCH_RESULTS])
    monkeypatch.setenv("LLMQ_MODELS_FILE", str(REMOTE))
    monkeypatch.setattr(streams_process, "build", build)
    level = streams_process.log.level
    try:
        with pytest.raises(BuiltError):
            streams_process.main()
    finally:
        streams_process.log.setLevel(level)  # set from LLMQ_LOG_LEVEL before it builds


def _cluster(monkeypatch: pytest.MonkeyPatch, existing: Collection[str]) -> list[list[str] | None]:
    """Kafka, to the start-up check, as aiokafka's admin client sees a cluster that has the
    `existing` topics; returns the names each metadata request asked for (None: all)."""
    asked: list[list[str] | None] = []

    class Admin:
        def __init__(self, **kwargs: Any) -> None:
            pass

        async def start(self) -> None:
            pass

        async def close(self) -> None:
            pass

        async def describe_topics(self, topics: list[str] | None = None) -> list[dict[str, Any]]:
            asked.append(topics)
            return [
                {"topic": name, "partitions": list(range(DEFAULT_PARTITIONS))}
                for name in existing
                if topics is None or name in topics  # a named one is auto-created: not here
            ]

    async def limit(admin: Admin, topic: str) -> int:
        return 1_000_000

    monkeypatch.setattr(startup, "AIOKafkaAdminClient", Admin)
    monkeypatch.setattr(startup, "record_limit", limit)
    return asked


def _remote_worker(monkeypatch: pytest.MonkeyPatch, serve: Callable[..., Any]) -> None:
    """`python -m workers` for REMOTE's remote-large (no vLLM), running `serve`."""
    monkeypatch.setenv("LLMQ_MODELS_FILE", str(REMOTE))
    monkeypatch.setenv("LLMQ_MODEL", "remote-large")
    monkeypatch.setenv("REMOTE_LLM_API_KEY", "k")
    monkeypatch.setattr(worker_process, "serve", serve)


def _front_door_on_a_free_port(monkeypatch: pytest.MonkeyPatch, *, checked: bool = True) -> None:
    """The front door as `python -m gateway` runs it, its Kafka away once reach_kafka passed
    (`checked`; else reach_kafka checks, as _cluster's Kafka answers)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("LLMQ_API_PORT", str(port))
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", DEAD_KAFKA)
    if checked:
        monkeypatch.setattr(startup, "reach_kafka", _nothing)


def _nothing(*args: Any, **kwargs: Any) -> dict[str, int]:
    """Kafka answered the start-up check (it is lost just after)."""
    return {}


def _never(*args: Any, **kwargs: Any) -> dict[str, int]:
    raise AssertionError("a refusal to fix comes before Kafka is tried")
