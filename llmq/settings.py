"""The `llmq` command's settings (LLMQ_* environment variables)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from schemas.settings import DEFAULT_KAFKA_PORT, DEFAULT_REDIS_PORT, ServiceSettings


class ClientSettings(ServiceSettings):
    """The shared settings, where Kafka and Redis default to a local stack on loopback: at
    LLMQ_KAFKA_PORT and LLMQ_REDIS_PORT when the stack was moved, unless LLMQ_KAFKA_BOOTSTRAP
    and LLMQ_REDIS_URL say otherwise."""

    kafka_port: int = Field(default=DEFAULT_KAFKA_PORT, ge=1, le=65535)
    """The local stack's Kafka port (LLMQ_KAFKA_PORT); only read without LLMQ_KAFKA_BOOTSTRAP."""
    redis_port: int = Field(default=DEFAULT_REDIS_PORT, ge=1, le=65535)
    """The local stack's Redis port (LLMQ_REDIS_PORT); only read without LLMQ_REDIS_URL."""

    @model_validator(mode="before")
    @classmethod
    def _local_stack_addresses(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "kafka_bootstrap" not in data and "kafka_port" in data:
            data["kafka_bootstrap"] = f"127.0.0.1:{data['kafka_port']}"
        if "redis_url" not in data and "redis_port" in data:
            data["redis_url"] = f"redis://127.0.0.1:{data['redis_port']}/0"
        return data
