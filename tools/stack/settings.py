"""Settings of the local stack runner (LLMQ_* environment variables)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, TypeAdapter, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.names import DEFAULT_PARTITIONS
from schemas.settings import DEFAULT_KAFKA_PORT, DEFAULT_REDIS_PORT
from tools.stack import MAX_STREAMS
from tools.stack.cores import usable_cores

MOST_REPLICAS = 16
REPLICA_COUNT = TypeAdapter(Annotated[int, Field(ge=0, le=MOST_REPLICAS)])
"""LLMQ_MIN_REPLICAS as its field reads it."""
LOCAL_WINDOWS = {
    "LLMQ_STABILIZATION_S": "60",
    "LLMQ_IDLE_S": "120",
    "LLMQ_DRAIN_INTERACTIVE_S": "5",
    "LLMQ_DRAIN_STANDARD_S": "30",
    "LLMQ_DRAIN_BATCH_S": "60",
}
"""The local autoscaler's windows, short enough to watch on one machine: each one set in the
environment of `llmq local up` is taken instead."""


def _default_max_replicas(least: int = 1) -> int:
    """Two workers per model where this process may use four cores or more, one below (a vLLM
    CPU engine takes every core: a second one on two cores loads and generates on the first
    one's), and never fewer than `least` (LLMQ_MIN_REPLICAS)."""
    room = 2 if usable_cores() >= 4 else 1
    return max(room, least)


class LocalSettings(BaseSettings):
    """Where the local stack keeps its state and which loopback ports it takes."""

    model_config = SettingsConfigDict(env_prefix="LLMQ_", extra="ignore", frozen=True)

    state_dir: Path = Path.home() / ".local" / "state" / "llmq"
    """Kafka and Redis data, pid files and logs (LLMQ_STATE_DIR)."""
    cache_dir: Path = Path.home() / ".cache" / "llmq"
    """Kafka jars and prepared models, kept across stacks (LLMQ_CACHE_DIR)."""
    kafka_port: int = Field(default=DEFAULT_KAFKA_PORT, ge=1024, le=65535)
    """The broker's client port (LLMQ_KAFKA_PORT); the controller takes the next one, and
    further brokers of a cluster the pairs after that."""
    brokers: int | None = None
    """Kafka brokers (LLMQ_BROKERS, or `llmq local up --brokers 3`): 1, the fast default, or
    3, a KRaft cluster whose topics keep 3 replicas and need 2 in sync, so it survives the
    loss of any one broker. Unset: as many as this stack's Kafka was made with."""
    streams: int = Field(default=1, ge=1, le=MAX_STREAMS)
    """Stream-processor instances, sharing the partitions as one consumer group
    (LLMQ_STREAMS, or `llmq local up --streams 2`)."""
    redis_port: int = Field(default=DEFAULT_REDIS_PORT, ge=1024, le=65535)
    """LLMQ_REDIS_PORT."""
    api_port: int = Field(default=28080, ge=1024, le=65535)
    """The HTTP front door's port on 127.0.0.1 (LLMQ_API_PORT)."""
    metrics_base_port: int = Field(default=29100, ge=1024, le=65000)
    """The stream processor's /metrics port; workers take the following ones."""
    partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, le=256)
    """Partitions of each llmq topic (LLMQ_PARTITIONS)."""
    models_file: Path | None = None
    """A TOML model catalog (LLMQ_MODELS_FILE); one worker is started per model."""
    tenants_file: Path | None = None
    """Per-tenant rate limits and budgets for the stream processor (LLMQ_TENANTS_FILE)."""
    compress_prompts: bool = False
    """Safe prompt compression in the stream processor (LLMQ_COMPRESS_PROMPTS)."""
    worker_start_timeout_s: float = Field(default=900.0, gt=0)
    """A first start prepares the model checkpoint, so this is generous."""
    kv_cache_gib: int | None = Field(default=None, ge=1, le=1024)
    """Each worker's KV cache on the CPU (LLMQ_KV_CACHE_GIB); the workers' default when
    unset. Less lets more workers share this machine's memory."""
    autoscale: bool = True
    """Run the autoscaler, which starts and stops each model's workers between min and max
    replicas (LLMQ_AUTOSCALE); off: a fixed pool of min_replicas workers per model (at
    least one)."""
    min_replicas: int = Field(default=1, ge=0, le=MOST_REPLICAS)
    """Fewest workers per model; 0 lets an idle pool go to zero (LLMQ_MIN_REPLICAS)."""
    max_replicas: int = Field(default_factory=_default_max_replicas, ge=1, le=MOST_REPLICAS)
    """Most workers per model on this machine (LLMQ_MAX_REPLICAS): by default 2 on four
    cores or more, else 1 (a CPU engine keeps two cores busy), and at least min_replicas."""
    autoscaler_env: dict[str, str] = Field(default_factory=dict, exclude=True)
    """Settings of the local autoscaler over its short local defaults, as LLMQ_* variables
    (the burst benchmark's windows); LLMQ_AUTOSCALER_ENV as JSON."""

    @model_validator(mode="before")
    @classmethod
    def _max_replicas_default(cls, data: Any) -> Any:
        """LLMQ_MAX_REPLICAS's default from a LLMQ_MIN_REPLICAS that is one (a default made
        from the fields validated would fail beside any other error, blaming a variable
        never set); a bad one is named by its own variable alone."""
        if not isinstance(data, dict) or "max_replicas" in data or "min_replicas" not in data:
            return data
        try:
            least = REPLICA_COUNT.validate_python(data["min_replicas"])
        except ValidationError:
            return data
        return {**data, "max_replicas": _default_max_replicas(least)}

    @model_validator(mode="after")
    def _replicas(self) -> Self:
        if self.brokers not in (None, 1, 3):
            raise ValueError(
                f"LLMQ_BROKERS={self.brokers}: the local stack runs 1 broker (the fast "
                "default) or 3 (a cluster that survives the loss of one)"
            )
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"LLMQ_MIN_REPLICAS ({self.min_replicas}) must not exceed "
                f"LLMQ_MAX_REPLICAS ({self.max_replicas})"
            )
        return self

    @staticmethod
    def autoscaler_windows() -> dict[str, str]:
        """The local autoscaler's windows (LOCAL_WINDOWS), but those set in this process's
        environment."""
        return {name: os.environ.get(name, value) for name, value in LOCAL_WINDOWS.items()}

    @property
    def kafka_ports(self) -> list[int]:
        """Each broker's client port."""
        return [self.kafka_port + 2 * n for n in range(self.brokers or 1)]

    @property
    def kafka_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.kafka_ports)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def service_env(self) -> dict[str, str]:
        """The environment that points a llmq process, a client or the CLI at this stack."""
        env = {
            "LLMQ_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "LLMQ_REDIS_URL": self.redis_url,
            "LLMQ_CACHE_DIR": str(self.cache_dir),
            "LLMQ_STATE_DIR": str(self.state_dir),
            "LLMQ_KAFKA_PORT": str(self.kafka_port),
            "LLMQ_REDIS_PORT": str(self.redis_port),
            "LLMQ_METRICS_BASE_PORT": str(self.metrics_base_port),
            "LLMQ_API_PORT": str(self.api_port),
            "LLMQ_MIN_REPLICAS": str(self.min_replicas),
            "LLMQ_MAX_REPLICAS": str(self.max_replicas),
            "LLMQ_PARTITIONS": str(self.partitions),
            "LLMQ_AUTOSCALE": str(self.autoscale).lower(),
            "LLMQ_STREAMS": str(self.streams),
        }
        if self.brokers is not None:
            env["LLMQ_BROKERS"] = str(self.brokers)
        if self.models_file is not None:
            env["LLMQ_MODELS_FILE"] = str(self.models_file)
        if self.tenants_file is not None:
            env["LLMQ_TENANTS_FILE"] = str(self.tenants_file)
        if self.compress_prompts:
            env["LLMQ_COMPRESS_PROMPTS"] = "true"
        if self.kv_cache_gib is not None:
            env["LLMQ_KV_CACHE_GIB"] = str(self.kv_cache_gib)
        return env
