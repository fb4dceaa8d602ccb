"""One real local stack per test session: Kafka, Redis, the stream processor, a vLLM worker."""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from llmq.client import Client
from llmq.settings import LocalSettings
from llmq.stack.stack import LocalStack
from schemas.settings import ServiceSettings


def _free_block(size: int) -> int:
    """The first of `size` consecutive free loopback ports: one block for the whole stack,
    so no two components can be handed the same port."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + size < 65000 and all(_free(port + i) for i in range(size)):
            return port
    raise RuntimeError("no free loopback ports")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Started once (about a minute; the first run on a machine also prepares the model)."""
    base = _free_block(5)  # Kafka, its controller, Redis, streams' and the worker's metrics
    settings = LocalSettings(
        state_dir=tmp_path_factory.mktemp("llmq-state"),
        kafka_port=base,
        redis_port=base + 2,
        metrics_base_port=base + 3,
        partitions=4,
    )
    local = LocalStack(settings)
    try:
        local.up(say=lambda line: print(line, flush=True))
        yield local
    finally:
        local.down(say=lambda line: None)


@pytest.fixture(scope="session")
def service_settings(stack: LocalStack) -> ServiceSettings:
    """What a client needs to reach the test stack."""
    return ServiceSettings(
        kafka_bootstrap=stack.settings.kafka_bootstrap, redis_url=stack.settings.redis_url
    )


@pytest.fixture(scope="session")
def client(service_settings: ServiceSettings) -> Iterator[Client]:
    """A client listening on the default reply topic."""
    with Client(service_settings) as c:
        yield c


@pytest.fixture
def reply_topic(service_settings: ServiceSettings) -> str:
    """A fresh reply topic of one partition, so a test sees only its own replies."""
    name = f"test.replies.{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=service_settings.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        admin.close()
    return name


@pytest.fixture(scope="session")
def cli_env(stack: LocalStack) -> dict[str, str]:
    """The environment of a separate process pointed at the test stack."""
    return {**os.environ, **stack.settings.service_env()}


@pytest.fixture(scope="session")
def llmq_bin() -> Path:
    """The console script installed next to this interpreter."""
    return Path(sys.executable).parent / "llmq"
