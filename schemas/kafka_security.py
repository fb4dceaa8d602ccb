"""How every llmq Kafka client authenticates and encrypts: SASL and TLS settings in one shape."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import SecretStr


class SecurityProtocol(StrEnum):
    """Kafka's security.protocol."""

    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    """The SASL mechanisms llmq passes through (all username and password)."""

    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


@dataclass(frozen=True)
class KafkaSecurity:
    """Validated on creation (ValueError names the LLMQ_ variable to fix); the password is a
    SecretStr, so neither repr nor a log line shows it."""

    protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    mechanism: SaslMechanism = SaslMechanism.PLAIN
    username: str | None = None
    password: SecretStr | None = None
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None

    def __post_init__(self) -> None:
        protocol = f"LLMQ_KAFKA_SECURITY_PROTOCOL={self.protocol.value}"
        if self.sasl and (not self.username or self.password is None):
            raise ValueError(
                f"{protocol} needs LLMQ_KAFKA_SASL_USERNAME and LLMQ_KAFKA_SASL_PASSWORD"
            )
        if not self.sasl and (self.username or self.password is not None):
            raise ValueError(
                f"LLMQ_KAFKA_SASL_USERNAME/PASSWORD are set but {protocol} does not use them; "
                "set SASL_PLAINTEXT or SASL_SSL"
            )
        files = {"CAFILE": self.cafile, "CERTFILE": self.certfile, "KEYFILE": self.keyfile}
        for name, path in files.items():
            if path is None:
                continue
            if not self.tls:
                raise ValueError(
                    f"LLMQ_KAFKA_SSL_{name} is set but {protocol} does not use TLS; "
                    "set SSL or SASL_SSL"
                )
            if not path.is_file():
                raise ValueError(f"LLMQ_KAFKA_SSL_{name}={path} is not a readable file")
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("LLMQ_KAFKA_SSL_KEYFILE needs LLMQ_KAFKA_SSL_CERTFILE")

    @property
    def sasl(self) -> bool:
        return self.protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)

    @property
    def tls(self) -> bool:
        return self.protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (system CAs unless a CA file is given; a client certificate when
        one is), or None without TLS."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.cafile)
        if self.certfile is not None:
            context.load_cert_chain(self.certfile, self.keyfile)
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of kafka-python's and aiokafka's clients (both take these)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol.value}
        if self.sasl:
            kwargs |= {
                "sasl_mechanism": self.mechanism.value,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password.get_secret_value() if self.password else None,
            }
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def describe(self) -> str:
        """Who connects and how, for error messages (never the password)."""
        if self.sasl:
            return f"{self.protocol.value} {self.mechanism.value} as {self.username!r}"
        return self.protocol.value
