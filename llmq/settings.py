"""The `llmq` command's settings (LLMQ_* environment variables)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, model_validator

from schemas.settings import DEFAULT_KAFKA_PORT, DEFAULT_REDIS_PORT, ServiceSettings


class ClientSettings(ServiceSettings):
    """The shared settings, where Kafka, Redis and the front door default to a local stack on
    loopback: at LLMQ_KAFKA_PORT, LLMQ_REDIS_PORT and LLMQ_API_PORT when the stack was
    moved, unless LLMQ_KAFKA_BOOTSTRAP, LLMQ_REDIS_URL and LLMQ_API_URL say otherwise."""

    kafka_port: int = Field(default=DEFAULT_KAFKA_PORT, ge=1, le=65535)
    """The local stack's Kafka port (LLMQ_KAFKA_PORT); only read without LLMQ_KAFKA_BOOTSTRAP."""
    redis_port: int = Field(default=DEFAULT_REDIS_PORT, ge=1, le=65535)
    """The local stack's Redis port (LLMQ_REDIS_PORT); only read without LLMQ_REDIS_URL."""
    api_port: int = Field(default=28080, ge=1, le=65535)
    """The local stack's front door port (LLMQ_API_PORT); only read without LLMQ_API_URL."""
    api_url: str = Field(default="http://127.0.0.1:28080/v1", min_length=1)
    """The front door's base URL (LLMQ_API_URL), for `llmq batch`."""
    api_key: SecretStr | None = None
    """An API key of the front door (LLMQ_API_KEY): `llmq batch` acts as its tenant. None
    for a door without keys (on loopback, tenant `default`)."""

    @model_validator(mode="before")
    @classmethod
    def _local_stack_addresses(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        # Only from a port that is one: a bad port is named by its own variable, not by an
        # address made of it.
        if "kafka_bootstrap" not in data and _is_port(data.get("kafka_port")):
            data["kafka_bootstrap"] = f"127.0.0.1:{data['kafka_port']}"
        if "redis_url" not in data and _is_port(data.get("redis_port")):
            data["redis_url"] = f"redis://127.0.0.1:{data['redis_port']}/0"
        if "api_url" not in data and _is_port(data.get("api_port")):
            data["api_url"] = f"http://127.0.0.1:{data['api_port']}/v1"
        return data


def _is_port(value: object) -> bool:
    """Whether `value` (a setting as given) is a TCP port number."""
    return str(value).isdigit() and 1 <= int(str(value)) <= 65535
