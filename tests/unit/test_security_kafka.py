"""Kafka SASL/TLS settings: validated with clear errors, mapped once for every client library."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import SecretStr, ValidationError

from schemas.kafka_security import KafkaSecurity, SaslMechanism, SecurityProtocol
from schemas.settings import ServiceSettings
from streams.app import broker_credentials

PASSWORD = "hunter2-never-logged"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key (it serves as the CA file too)."""
    folder = tmp_path_factory.mktemp("pki")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=llmq-test-ca", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _sasl(protocol: SecurityProtocol = SecurityProtocol.SASL_PLAINTEXT, **kw: Any) -> KafkaSecurity:
    return KafkaSecurity(protocol=protocol, username="alice", password=SecretStr(PASSWORD), **kw)


def test_plaintext_is_the_default_and_passes_nothing_else() -> None:
    assert ServiceSettings().kafka_security() == KafkaSecurity()
    assert KafkaSecurity().client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert broker_credentials(KafkaSecurity()) is None


@pytest.mark.parametrize("mechanism", list(SaslMechanism))
def test_sasl_maps_to_the_client_keywords(mechanism: SaslMechanism) -> None:
    assert _sasl(mechanism=mechanism).client_kwargs() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism.value,
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
    }


def test_tls_builds_a_verifying_context_with_the_client_certificate(pki: tuple[Path, Path]) -> None:
    cert, key = pki
    security = _sasl(SecurityProtocol.SASL_SSL, cafile=cert, certfile=cert, keyfile=key)
    kwargs = security.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "llmq-test-ca"),),)]


def test_tls_without_a_ca_file_trusts_the_system_cas() -> None:
    context = KafkaSecurity(protocol=SecurityProtocol.SSL).ssl_context()
    assert context is not None and context.verify_mode is ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    "security",
    [
        _sasl(),
        _sasl(SecurityProtocol.SASL_SSL, mechanism=SaslMechanism.SCRAM_SHA_512),
        KafkaSecurity(protocol=SecurityProtocol.SSL),
    ],
    ids=["sasl-plaintext", "sasl-ssl-scram", "ssl"],
)
def test_faust_gets_the_same_settings_as_the_other_clients(security: KafkaSecurity) -> None:
    """faust's own translation of our credentials gives what aiokafka gets in the worker."""
    ours = security.client_kwargs()
    faust = dict(credentials_to_aiokafka_auth(broker_credentials(security)))
    assert isinstance(faust.pop("ssl_context", None), ssl.SSLContext) == security.tls
    ours.pop("ssl_context", None)
    assert faust == ours


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"LLMQ_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs LLMQ_KAFKA_SASL_USERNAME"),
        (
            {"LLMQ_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "LLMQ_KAFKA_SASL_USERNAME": "a"},
            "LLMQ_KAFKA_SASL_PASSWORD",
        ),
        ({"LLMQ_KAFKA_SASL_PASSWORD": PASSWORD}, "does not use them"),
        ({"LLMQ_KAFKA_SSL_CAFILE": "/etc/hostname"}, "does not use TLS"),
        (
            {"LLMQ_KAFKA_SECURITY_PROTOCOL": "SSL", "LLMQ_KAFKA_SSL_CAFILE": "/nonexistent.pem"},
            "LLMQ_KAFKA_SSL_CAFILE=/nonexistent.pem is not a readable file",
        ),
        ({"LLMQ_KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka_security_protocol"),
        ({"LLMQ_KAFKA_SASL_MECHANISM": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
    ids=["no-user", "no-password", "sasl-off", "tls-off", "missing-file", "protocol", "mechanism"],
)
def test_incomplete_settings_are_refused_with_what_to_fix(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], complaint: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=complaint) as caught:
        ServiceSettings()
    assert PASSWORD not in str(caught.value)  # what a failed start prints


def test_a_key_needs_its_certificate(pki: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="KEYFILE needs LLMQ_KAFKA_SSL_CERTFILE"):
        KafkaSecurity(protocol=SecurityProtocol.SSL, keyfile=pki[1])


def test_the_password_is_read_from_the_environment_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMQ_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("LLMQ_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("LLMQ_KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("LLMQ_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("LLMQ_REDIS_URL", f"redis://alice:{PASSWORD}@cache:6379/0")
    settings = ServiceSettings()
    security = settings.kafka_security()
    assert security.client_kwargs()["sasl_plain_password"] == PASSWORD
    assert security.describe() == "SASL_PLAINTEXT SCRAM-SHA-256 as 'alice'"
    for shown in (repr(settings), str(settings), repr(security), security.describe()):
        assert PASSWORD not in shown
