"""The `llmq` command's settings (LLMQ_* environment variables)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

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

    @field_validator("api_key")
    @classmethod
    def _header_value(cls, key: SecretStr | None) -> SecretStr | None:
        """The key as the door reads it, without the whitespace around it (a key read from a
        file keeps its newline), and one a header can carry: printable ASCII. The refusal
        never shows it."""
        if key is None:
            return None
        value = key.get_secret_value().strip()
        if not (value.isascii() and value.isprintable()):
            raise ValueError(
                "an API key is printable ASCII (as `llmq keys new` makes them); this one holds "
                "a control character or one beyond ASCII"
            )
        return SecretStr(value) if value else None

    @model_validator(mode="before")
    @classmethod
    def _local_stack_addresses(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        # Only from a port that is one (as its field reads it: " 29094" is 29094): a bad port
        # is named by its own variable, not by an address made of it.
        made = {
            "kafka_bootstrap": ("kafka_port", "127.0.0.1:{}"),
            "redis_url": ("redis_port", "redis://127.0.0.1:{}/0"),
            "api_url": ("api_port", "http://127.0.0.1:{}/v1"),
        }
        for address, (name, form) in made.items():
            port = _port(data.get(name))
            if address not in data and port is not None:
                data[address] = form.format(port)
        return data


PORT = TypeAdapter(Annotated[int, Field(ge=1, le=65535)])
"""A port setting as its field reads it."""


def _port(value: object) -> int | None:
    """The TCP port `value` (a setting as given) stands for; None if none (or not given)."""
    try:
        return None if value is None else PORT.validate_python(value)
    except ValidationError:
        return None
