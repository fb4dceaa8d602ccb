"""Settings every llmq process shares: where Kafka and Redis are, and the model catalog."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.catalog import Catalog

DEFAULT_KAFKA_PORT = 29092
DEFAULT_REDIS_PORT = 26379


class ServiceSettings(BaseSettings):
    """Read from `LLMQ_*` environment variables; each service extends it with its own."""

    model_config = SettingsConfigDict(env_prefix="LLMQ_", extra="ignore", frozen=True)

    kafka_bootstrap: str = Field(default=f"127.0.0.1:{DEFAULT_KAFKA_PORT}", min_length=1)
    """Kafka bootstrap servers, comma-separated host:port (LLMQ_KAFKA_BOOTSTRAP)."""
    redis_url: str = Field(default=f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0", min_length=1)
    """Redis for the response cache and the result store (LLMQ_REDIS_URL)."""
    models_file: Path | None = None
    """A TOML model catalog (LLMQ_MODELS_FILE); the built-in SmolLM2 catalog when unset."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of the Prometheus /metrics endpoint; 0 turns it off (LLMQ_METRICS_PORT)."""
    metrics_host: str = "127.0.0.1"
    """Address /metrics binds to; 0.0.0.0 in a container (LLMQ_METRICS_HOST)."""
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    """LLMQ_LOG_LEVEL."""

    def catalog(self) -> Catalog:
        """The model catalog these settings point to."""
        return Catalog.load(self.models_file)
