"""Every service's settings come from LLMQ_* environment variables and are validated."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import openai
import pytest
from pydantic import ValidationError

from gateway.door import MAX_JSON_BYTES
from gateway.settings import GatewaySettings
from llmq.startup import CONFIGURATION, StartError, listen, reach_kafka, read_settings
from schemas.settings import DEFAULT_KAFKA_PORT, DEFAULT_REDIS_PORT, ServiceSettings
from streams.settings import StreamSettings
from tools.stack import settings as stack_settings
from tools.stack import variables
from tools.stack.settings import LocalSettings
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LLMQ_* variable of the surrounding shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("LLMQ_"):
            monkeypatch.delenv(name)


def test_service_defaults() -> None:
    settings = ServiceSettings()
    assert settings.kafka_bootstrap == f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
    assert settings.redis_url == f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"
    assert settings.models_file is None
    assert settings.metrics_port == 0
    assert settings.log_level == "INFO"
    assert settings.catalog().names == ["smollm2-135m"]


def test_service_settings_read_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    models = tmp_path / "models.toml"
    models.write_text('default = "m"\n[[models]]\nname = "m"\nsource = "/ckpt"\n')
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("LLMQ_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("LLMQ_MODELS_FILE", str(models))
    monkeypatch.setenv("LLMQ_METRICS_PORT", "9100")
    monkeypatch.setenv("LLMQ_METRICS_HOST", "0.0.0.0")
    monkeypatch.setenv("LLMQ_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("LLMQ_SOMETHING_ELSE", "ignored")
    settings = ServiceSettings()
    assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.models_file == models
    assert settings.metrics_port == 9100
    assert settings.metrics_host == "0.0.0.0"
    assert settings.log_level == "DEBUG"
    assert settings.catalog().names == ["m"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLMQ_METRICS_PORT", "70000"),
        ("LLMQ_METRICS_PORT", "-1"),
        ("LLMQ_METRICS_PORT", "http"),
        ("LLMQ_LOG_LEVEL", "TRACE"),
        ("LLMQ_LOG_LEVEL", "info"),
        ("LLMQ_KAFKA_BOOTSTRAP", ""),
        ("LLMQ_REDIS_URL", ""),
    ],
)
def test_invalid_service_settings_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        ServiceSettings()
    with pytest.raises(ValidationError):
        StreamSettings()
    with pytest.raises(ValidationError):
        WorkerSettings()


def test_a_models_file_that_is_missing_fails_when_the_catalog_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LLMQ_MODELS_FILE", str(tmp_path / "absent.toml"))
    with pytest.raises(ValueError, match="LLMQ_MODELS_FILE"):
        ServiceSettings().catalog()


def test_settings_are_frozen() -> None:
    settings = ServiceSettings()
    with pytest.raises(ValidationError):
        settings.log_level = "DEBUG"  # type: ignore[misc]


def test_stream_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = StreamSettings()
    assert (defaults.app_id, defaults.partitions, defaults.concurrency) == ("llmq-streams", 4, 8)
    assert defaults.cache_ttl_s == defaults.result_ttl_s == 24 * 3600
    monkeypatch.setenv("LLMQ_APP_ID", "llmq-streams-b")
    monkeypatch.setenv("LLMQ_PARTITIONS", "12")
    monkeypatch.setenv("LLMQ_CONCURRENCY", "32")
    monkeypatch.setenv("LLMQ_CACHE_TTL_S", "60")
    monkeypatch.setenv("LLMQ_RESULT_TTL_S", "120")
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", "k:1")
    settings = StreamSettings()
    assert settings.app_id == "llmq-streams-b"
    assert (settings.partitions, settings.concurrency) == (12, 32)
    assert (settings.cache_ttl_s, settings.result_ttl_s) == (60, 120)
    assert settings.kafka_bootstrap == "k:1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLMQ_APP_ID", "has space"),
        ("LLMQ_APP_ID", ""),
        ("LLMQ_PARTITIONS", "0"),
        ("LLMQ_PARTITIONS", "257"),
        ("LLMQ_CONCURRENCY", "0"),
        ("LLMQ_CACHE_TTL_S", "0"),
        ("LLMQ_RESULT_TTL_S", "-5"),
    ],
)
def test_invalid_stream_settings_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        StreamSettings()


def test_worker_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    defaults = WorkerSettings()
    assert defaults.model is None
    assert defaults.worker_id.endswith(f"-{os.getpid()}")
    assert defaults.kv_cache_gib == 2
    assert defaults.gpu_memory_utilization == 0.85
    monkeypatch.setenv("LLMQ_MODEL", "qwen2.5-0.5b")
    monkeypatch.setenv("LLMQ_WORKER_ID", "worker-7")
    monkeypatch.setenv("LLMQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LLMQ_KV_CACHE_GIB", "8")
    monkeypatch.setenv("LLMQ_GPU_MEMORY_UTILIZATION", "0.5")
    monkeypatch.setenv("LLMQ_COMMIT_INTERVAL_S", "0.25")
    monkeypatch.setenv("LLMQ_DRAIN_TIMEOUT_S", "0")
    settings = WorkerSettings()
    assert settings.model == "qwen2.5-0.5b"
    assert settings.worker_id == "worker-7"
    assert settings.cache_dir == tmp_path
    assert settings.kv_cache_gib == 8
    assert settings.gpu_memory_utilization == 0.5
    assert settings.commit_interval_s == 0.25
    assert settings.drain_timeout_s == 0.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLMQ_WORKER_ID", ""),
        ("LLMQ_KV_CACHE_GIB", "0"),
        ("LLMQ_GPU_MEMORY_UTILIZATION", "0"),
        ("LLMQ_GPU_MEMORY_UTILIZATION", "1.5"),
        ("LLMQ_COMMIT_INTERVAL_S", "0"),
        ("LLMQ_COMMIT_INTERVAL_S", "61"),
        ("LLMQ_DRAIN_TIMEOUT_S", "-1"),
        ("LLMQ_MAX_STARTS", "1"),  # its last start runs alone: there must be one before
    ],
)
def test_invalid_worker_settings_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        WorkerSettings()


def test_the_front_doors_bounds_on_what_it_holds_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its body bytes hold at least one largest body, which is then never refused alone."""
    defaults = GatewaySettings()
    assert (defaults.api_open_calls, defaults.api_body_bytes) == (2048, 256 << 20)
    monkeypatch.setenv("LLMQ_API_OPEN_CALLS", "1")
    monkeypatch.setenv("LLMQ_API_BODY_BYTES", str(MAX_JSON_BYTES))
    settings = GatewaySettings()
    assert (settings.api_open_calls, settings.api_body_bytes) == (1, MAX_JSON_BYTES)
    for name, value in [("LLMQ_API_OPEN_CALLS", 0), ("LLMQ_API_BODY_BYTES", MAX_JSON_BYTES - 1)]:
        monkeypatch.setenv(name, str(value))
        with pytest.raises(ValidationError):
            GatewaySettings()
        monkeypatch.delenv(name)


def test_an_expired_request_is_answered_before_the_openai_sdk_times_out() -> None:
    """The SDK takes 600 s of silence for a failure and sends the request twice more (each
    with a new deadline): the door's 408 must come first."""
    read_s = openai.DEFAULT_TIMEOUT.read
    assert read_s is not None and GatewaySettings().reply_wait_s < read_s


def test_a_refusal_names_each_wrong_variable_as_the_environment_spells_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMQ_PARTITIONS", "0")
    monkeypatch.setenv("LLMQ_LOG_LEVEL", "LOUD")
    with pytest.raises(StartError) as refused:
        read_settings(StreamSettings)
    assert refused.value.code == CONFIGURATION
    assert str(refused.value) == (
        "LLMQ_LOG_LEVEL: String should match pattern '^(DEBUG|INFO|WARNING|ERROR)$'; "
        "LLMQ_PARTITIONS: Input should be greater than or equal to 1"
    )
    monkeypatch.delenv("LLMQ_LOG_LEVEL")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "0")  # read under its own name
    with pytest.raises(StartError) as refused:
        read_settings(WorkerSettings)
    assert (
        str(refused.value) == "VLLM_CPU_KVCACHE_SPACE: Input should be greater than or equal to 1"
    )


def test_a_refusal_of_settings_that_do_not_fit_together_shows_no_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMQ_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LLMQ_KAFKA_SASL_PASSWORD", "hunter2")  # no user
    with pytest.raises(StartError) as refused:
        read_settings(WorkerSettings)
    assert str(refused.value).startswith("settings: Value error, ")  # no one variable
    assert "LLMQ_KAFKA_SASL_USERNAME" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_tls_files_that_do_not_load_are_a_refusal_to_fix_not_a_traceback(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    settings = ServiceSettings(kafka_security_protocol="SSL", kafka_ssl_cafile=junk)
    with pytest.raises(StartError) as refused:
        reach_kafka(settings, "tls-start")  # fails before any connection is tried
    assert refused.value.code == CONFIGURATION
    assert str(refused.value).startswith("cannot use the TLS files of LLMQ_KAFKA_SSL_*: SSLError")


def test_a_taken_port_is_a_refusal_to_fix_naming_its_settings() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(StartError) as refused:
            listen("127.0.0.1", port, "LLMQ_API_HOST, LLMQ_API_PORT")
    assert refused.value.code == CONFIGURATION
    said = str(refused.value)
    assert said.startswith(f"cannot listen on 127.0.0.1:{port} (LLMQ_API_HOST, LLMQ_API_PORT): ")
    assert "Address already in use" in said
    with listen("127.0.0.1", port, "LLMQ_API_PORT") as sock:  # free again
        assert sock.getsockname() == ("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # it listens at once: a connection waits for the server in its backlog


def test_local_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(stack_settings, "usable_cores", lambda: 8.0)
    defaults = LocalSettings()
    assert defaults.kafka_bootstrap == f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
    assert defaults.redis_url == f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"
    assert "LLMQ_MODELS_FILE" not in defaults.service_env()
    monkeypatch.setenv("LLMQ_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LLMQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LLMQ_KAFKA_PORT", "39092")
    monkeypatch.setenv("LLMQ_REDIS_PORT", "36379")
    monkeypatch.setenv("LLMQ_MODELS_FILE", str(tmp_path / "models.toml"))
    settings = LocalSettings()
    assert settings.state_dir == tmp_path / "state"
    assert settings.service_env() == {
        "LLMQ_KAFKA_BOOTSTRAP": "127.0.0.1:39092",
        "LLMQ_REDIS_URL": "redis://127.0.0.1:36379/0",
        "LLMQ_CACHE_DIR": str(tmp_path / "cache"),
        "LLMQ_STATE_DIR": str(tmp_path / "state"),
        "LLMQ_KAFKA_PORT": "39092",
        "LLMQ_REDIS_PORT": "36379",
        "LLMQ_METRICS_BASE_PORT": "29100",
        "LLMQ_API_PORT": "28080",
        "LLMQ_MIN_REPLICAS": "1",
        "LLMQ_MAX_REPLICAS": "2",
        "LLMQ_PARTITIONS": "4",
        "LLMQ_AUTOSCALE": "true",
        "LLMQ_STREAMS": "1",
        "LLMQ_MODELS_FILE": str(tmp_path / "models.toml"),
    }


@pytest.mark.parametrize(("cores", "most"), [(1.0, 1), (2.0, 1), (3.5, 1), (4.0, 2), (16.0, 2)])
def test_the_local_pool_grows_to_two_only_where_the_cores_leave_room(
    monkeypatch: pytest.MonkeyPatch, cores: float, most: int
) -> None:
    """The cores this process may use (tests/unit/test_stack_cores.py), not the host's."""
    monkeypatch.setattr(stack_settings, "usable_cores", lambda: cores)
    assert LocalSettings().max_replicas == most
    assert LocalSettings(min_replicas=3).max_replicas == 3  # the least asked for is kept
    monkeypatch.setenv("LLMQ_MAX_REPLICAS", "5")
    assert LocalSettings().max_replicas == 5
    monkeypatch.setenv("LLMQ_MIN_REPLICAS", "6")
    with pytest.raises(ValidationError, match=r"LLMQ_MIN_REPLICAS \(6\) must not exceed"):
        LocalSettings()


def test_the_cli_sees_the_shape_of_the_stack_it_is_pointed_at(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fixed = LocalSettings(autoscale=False, streams=2, brokers=3)
    for name, value in fixed.service_env().items():
        monkeypatch.setenv(name, value)
    seen = LocalSettings()
    assert (seen.autoscale, seen.streams, seen.brokers) == (False, 2, 3)


def test_a_cluster_of_three_is_bootstrapped_from_every_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMQ_KAFKA_PORT", "39092")
    monkeypatch.setenv("LLMQ_BROKERS", "3")
    settings = LocalSettings()
    assert settings.kafka_ports == [39092, 39094, 39096]
    assert settings.kafka_bootstrap == "127.0.0.1:39092,127.0.0.1:39094,127.0.0.1:39096"
    assert settings.service_env()["LLMQ_BROKERS"] == "3"


def test_service_env_round_trips_into_service_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMQ_KAFKA_PORT", "39092")
    monkeypatch.setenv("LLMQ_REDIS_PORT", "36379")
    for name, value in LocalSettings().service_env().items():
        monkeypatch.setenv(name, value)
    service = ServiceSettings()
    assert service.kafka_bootstrap == "127.0.0.1:39092"
    assert service.redis_url == "redis://127.0.0.1:36379/0"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLMQ_KAFKA_PORT", "80"),
        ("LLMQ_REDIS_PORT", "65536"),
        ("LLMQ_METRICS_BASE_PORT", "65001"),
        ("LLMQ_PARTITIONS", "0"),
        ("LLMQ_WORKER_START_TIMEOUT_S", "0"),
        ("LLMQ_BROKERS", "2"),
        ("LLMQ_STREAMS", "5"),
    ],
)
def test_invalid_local_settings_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        LocalSettings()


def test_every_settings_module_is_looked_at_for_the_variables_read() -> None:
    modules = {f"{path.parent.name}.settings" for path in ROOT.glob("*/settings.py")}
    assert modules | {"tools.stack.settings"} == set(variables.SETTINGS_MODULES)


def test_a_misspelt_variable_is_said_with_the_one_meant() -> None:
    environ = {"LLMQ_REDIS_ULR": "redis://x", "LLMQ_REDIS_URL": "redis://y", "LLMQ_VENV": "v"}
    environ |= {"LLMQ_NOTHING_LIKE_IT": "1", "PATH": "/bin", "llmq_partitions": "2"}
    environ |= {"LLMQ_VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_CPU_KVCACHE_SPACE": "4"}
    assert variables.unread(environ) == [
        "LLMQ_NOTHING_LIKE_IT is set, but no part of llmq reads it",
        "LLMQ_REDIS_ULR is set, but no part of llmq reads it (did you mean LLMQ_REDIS_URL?)",
        "LLMQ_VLLM_CPU_KVCACHE_SPACE is set, but no part of llmq reads it"
        " (did you mean VLLM_CPU_KVCACHE_SPACE?)",
    ]


def test_every_variable_the_docs_and_tools_name_is_one_a_service_reads() -> None:
    read = variables.read()
    sources = [
        ROOT / "README.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("*/settings.py"),
        *ROOT.glob("tools/**/*.py"),
    ]
    named = {
        (path.relative_to(ROOT).as_posix(), name)
        for path in sources
        for name in re.findall(r"\bLLMQ_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8"))
    }
    assert sorted((where, name) for where, name in named if name not in read) == []
