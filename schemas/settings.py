"""Settings every llmq process shares: where Kafka and Redis are and how to reach them
securely, the model catalog, and what may be logged."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal, Self, get_args
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import RedisError

from schemas.catalog import Catalog
from schemas.kafka_security import KafkaSecurity, SaslMechanism, SecurityProtocol
from schemas.redact import MASK

DEFAULT_KAFKA_PORT = 29092
DEFAULT_REDIS_PORT = 26379
KAFKA_SERVER = re.compile(r"(?:\[[^\s\[\]/@?#]+\]|[^\s\[\]/:@?#]+)(?::(?P<port>[0-9]+))?")
"""One bootstrap server: a host, or an IPv6 address in brackets, then :port (the Kafka clients
take 9092 where it is left out)."""


class ServiceSettings(BaseSettings):
    """Read from `LLMQ_*` environment variables; each service extends it with its own."""

    model_config = SettingsConfigDict(
        env_prefix="LLMQ_", extra="ignore", frozen=True, hide_input_in_errors=True
    )
    """Errors name the variable, never its value: it may be a password."""

    kafka_bootstrap: str = Field(default=f"127.0.0.1:{DEFAULT_KAFKA_PORT}", min_length=1)
    """Kafka bootstrap servers, comma-separated host:port, an IPv6 address in brackets
    (LLMQ_KAFKA_BOOTSTRAP)."""
    kafka_security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (LLMQ_KAFKA_SECURITY_PROTOCOL)."""
    kafka_sasl_mechanism: SaslMechanism = SaslMechanism.PLAIN
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (LLMQ_KAFKA_SASL_MECHANISM)."""
    kafka_sasl_username: str | None = None
    """LLMQ_KAFKA_SASL_USERNAME; required with SASL."""
    kafka_sasl_password: SecretStr | None = None
    """LLMQ_KAFKA_SASL_PASSWORD; required with SASL, never shown in a repr or a log."""
    kafka_ssl_cafile: Path | None = None
    """CA bundle that signed the brokers' certificates; the system's when unset
    (LLMQ_KAFKA_SSL_CAFILE)."""
    kafka_ssl_certfile: Path | None = None
    """Client certificate, PEM, for brokers that require one (LLMQ_KAFKA_SSL_CERTFILE)."""
    kafka_ssl_keyfile: Path | None = None
    """The client certificate's private key, PEM (LLMQ_KAFKA_SSL_KEYFILE)."""
    redis_url: str = Field(
        default=f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0", min_length=1, repr=False
    )
    """Redis for the caches and the result store (LLMQ_REDIS_URL): a password and TLS go in
    the URL (`rediss://user:password@host:6380/0?ssl_ca_certs=/path/ca.pem`), which is why it
    is left out of the repr; show it with schemas.redact.mask_url."""
    models_file: Path | None = None
    """A TOML model catalog (LLMQ_MODELS_FILE); the built-in SmolLM2 catalog when unset."""
    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Port of the Prometheus /metrics endpoint; 0 turns it off (LLMQ_METRICS_PORT)."""
    metrics_host: str = "127.0.0.1"
    """Address /metrics binds to; 0.0.0.0 in a container (LLMQ_METRICS_HOST)."""
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    """LLMQ_LOG_LEVEL."""
    log_content: bool = False
    """Log prompts and answers (at DEBUG, through the `llmq.content` logger); otherwise no
    log line carries them (LLMQ_LOG_CONTENT)."""
    prefix_cache_scope: Literal["tenant", "shared"] = "tenant"
    """Whose cached prompt prefixes a request may reuse: its tenant's only (a worker's vLLM
    engine salts each request's cache with its tenant, so no tenant can time another's
    prompts, and the stream processor's prefix affinity groups work by tenant and prefix),
    or every tenant's (LLMQ_PREFIX_CACHE_SCOPE)."""

    @field_validator("*", mode="before")
    @classmethod
    def _a_path_is_not_empty(cls, value: object, info: ValidationInfo) -> object:
        """An empty variable would be the working directory (Path("") is "."): for a file,
        a refusal that says "Is a directory" later, far from the variable."""
        annotation = cls.model_fields[info.field_name or ""].annotation
        if value == "" and Path in (annotation, *get_args(annotation)):
            raise ValueError("is empty; name a path, or unset it")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_reads_the_url(cls, url: str) -> str:
        """What redis-py makes of the URL (scheme, port, query options), without connecting:
        not a ValueError from each service's first Redis client, after a model loaded."""
        try:
            _ = urlsplit(url).port  # urllib's errors quote the host or port (a misplaced password?)
        except ValueError:
            raise ValueError("its host or port does not parse") from None
        try:
            pool = ConnectionPool.from_url(url)
            pool.make_connection()  # type: ignore[no-untyped-call]  # an unknown option: TypeError
        except (ValueError, TypeError, RedisError) as exc:
            raise ValueError(f"redis-py cannot use it: {exc}") from None
        return url

    @field_validator("kafka_bootstrap")
    @classmethod
    def _kafka_reads_the_servers(cls, servers: str) -> str:
        """Each server as aiokafka and kafka-python split it, without connecting: not their
        ValueError or OverflowError from each service's first Kafka client."""
        for server in (s.strip() for s in servers.split(",")):
            if not _is_kafka_server(server):
                # A user part is no Kafka server's, but may hold a password (commas too):
                # nothing before the value's last @ is shown.
                shown = f"{MASK}@{servers.rsplit('@', 1)[1]}" if "@" in servers else server
                raise ValueError(
                    f"{shown!r} is not host:port (a port from 1 to 65535, an IPv6 address "
                    "in brackets)"
                )
        return servers

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Self:
        self.kafka_security()  # raises ValueError, naming what is missing
        return self

    def kafka_security(self) -> KafkaSecurity:
        """How Kafka clients authenticate and encrypt: pass `client_kwargs()` to any client."""
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            mechanism=self.kafka_sasl_mechanism,
            username=self.kafka_sasl_username,
            password=self.kafka_sasl_password,
            cafile=self.kafka_ssl_cafile,
            certfile=self.kafka_ssl_certfile,
            keyfile=self.kafka_ssl_keyfile,
        )

    def catalog(self) -> Catalog:
        """The model catalog these settings point to."""
        return Catalog.load(self.models_file)


def _is_kafka_server(server: str) -> bool:
    """`server` fits KAFKA_SERVER with a port in range, or is an IPv6 address alone (on 9092;
    the clients take any other colon for a port's)."""
    if match := KAFKA_SERVER.fullmatch(server):
        return match["port"] is None or 1 <= int(match["port"]) <= 65535
    try:
        socket.inet_pton(socket.AF_INET6, server)
    except (OSError, ValueError):
        return False
    return True
