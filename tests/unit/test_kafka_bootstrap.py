"""LLMQ_KAFKA_BOOTSTRAP is read as the Kafka clients read it, at start: a server they cannot
parse is a one-line refusal naming the variable and the server (it was aiokafka's ValueError
or OverflowError, a traceback), and a cluster that does not answer is a line saying how to
start one. Nothing listens on 127.0.0.1:1."""

from __future__ import annotations

import os

import pytest
from aiokafka.conn import collect_hosts as aiokafka_hosts
from kafka import KafkaProducer
from kafka.cluster import collect_hosts as kafka_python_hosts

from gateway.settings import GatewaySettings
from llmq import client
from llmq.cli import main
from llmq.client import connect
from llmq.settings import ClientSettings
from llmq.startup import CONFIGURATION, StartError, read_settings
from schemas.kafka_security import KafkaSecurity
from schemas.settings import ServiceSettings
from streams.settings import StreamSettings

pytestmark = pytest.mark.timeout(60)

BAD = [
    "127.0.0.1:notaport",
    "127.0.0.1:70000",
    "127.0.0.1:0",
    "127.0.0.1:-1",
    "127.0.0.1:29092/",
    "127.0.0.1:",
    ":9092",
    "kafka-1:9092,",
    "kafka-1:9092,,kafka-2:9092",
    "   ",
    "PLAINTEXT://kafka-1:9092",
    "[::1",
    "[::1]9092",
    "[]:9092",
    "fe80::1%eth0",  # its scope is read as a port
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LLMQ_* variable of the surrounding shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("LLMQ_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("settings", [ServiceSettings, StreamSettings, GatewaySettings])
def test_a_server_the_clients_cannot_parse_is_a_refusal_naming_the_variable(
    value: str, settings: type[ServiceSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", value)
    with pytest.raises(StartError) as refused:
        read_settings(settings)
    assert refused.value.code == CONFIGURATION
    said = str(refused.value)
    assert said.startswith("LLMQ_KAFKA_BOOTSTRAP: ") and "is not host:port" in said


@pytest.mark.parametrize(
    ("value", "bad"),
    [("127.0.0.1:notaport", "'127.0.0.1:notaport'"), ("kafka-1:9092, kafka-2:70000", "70000")],
)
def test_the_refusal_names_the_server_at_fault(
    value: str, bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", value)
    with pytest.raises(StartError, match=bad):
        read_settings(ServiceSettings)


@pytest.mark.parametrize("secret", ["s3cret", "pa,ss"])
def test_a_password_in_a_server_is_not_shown(secret: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors name the variable, never a secret: a URL's user part is no Kafka server's (a
    password's comma split it in two servers, the first shown)."""
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", f"SASL_SSL://app:{secret}@broker:9092")
    with pytest.raises(StartError) as refused:
        read_settings(ServiceSettings)
    said = str(refused.value)
    assert secret.partition(",")[0] not in said and "app:" not in said
    assert "'***@broker:9092'" in said


@pytest.mark.parametrize(
    "value",
    [
        "127.0.0.1:29092",
        "kafka-1:9092,kafka-2:9092,kafka-3:9092",
        " kafka-1:9092 , kafka-2:9092 ",  # the clients strip each server
        "kafka",  # the clients take 9092
        "broker_1.example.com:09092",
        "[::1]:9092",
        "[::1]",
        "::1",  # an IPv6 address alone is on 9092
        "[fe80::1%eth0]:9092",
        "[kafka-1]:9092",
        "[::ffff:127.0.0.1]:65535",
    ],
)
def test_every_server_the_clients_take_is_accepted(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", value)
    assert ServiceSettings().kafka_bootstrap == value
    for parse in (aiokafka_hosts, kafka_python_hosts):  # as the services, as the client
        assert all(0 < port < 65536 for _, port, _ in parse(value))


@pytest.mark.parametrize("value", ["127.0.0.1:notaport", "127.0.0.1:70000"])
def test_the_command_refuses_it_in_one_line_with_status_2(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llmq submit` printed an OverflowError's traceback, or int()'s message alone."""
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", value)
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["submit", "hi"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"llmq: LLMQ_KAFKA_BOOTSTRAP: Value error, {value!r} is not host:port")


@pytest.mark.parametrize("port", ["abc", "70000"])
def test_a_bad_local_port_is_named_alone(
    port: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not also as LLMQ_KAFKA_BOOTSTRAP, which the user never set: the local stack's address
    is made of the port only when it is one."""
    monkeypatch.setenv("LLMQ_KAFKA_PORT", port)
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["submit", "hi"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("llmq: LLMQ_KAFKA_PORT") and "LLMQ_KAFKA_BOOTSTRAP" not in line


@pytest.mark.parametrize("port", ["29094 ", " 29094", "+29094"])
def test_a_local_port_is_read_as_its_field_reads_it(
    port: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not left for the default address: the command would talk to another stack."""
    monkeypatch.setenv("LLMQ_KAFKA_PORT", port)
    monkeypatch.setenv("LLMQ_REDIS_PORT", port)
    settings = ClientSettings()
    assert settings.kafka_bootstrap == "127.0.0.1:29094"
    assert settings.redis_url == "redis://127.0.0.1:29094/0"


def test_a_cluster_that_does_not_answer_is_said_with_how_to_start_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error named no variable and no way to bring the stack up. kafka-python retries a
    refused connection (a broker starting refuses a while) until CONNECT_TIMEOUT_S."""
    monkeypatch.setattr(client, "CONNECT_TIMEOUT_S", 0.3)
    with pytest.raises(RuntimeError) as failed:
        connect(KafkaProducer, "127.0.0.1:1", KafkaSecurity())
    said = str(failed.value)
    assert said.startswith("cannot connect to Kafka at 127.0.0.1:1 (PLAINTEXT) within 0.3 s: ")
    assert "(llmq local up)" in said and "LLMQ_KAFKA_BOOTSTRAP" in said
