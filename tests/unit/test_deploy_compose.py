"""docker-compose.yml's bind mounts: a host path that does not exist is mounted as an empty
directory, so a service reading a file there crash-loops; compose must stop first."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"^\$\{(?P<name>\w+)(?::(?P<op>[-?])(?P<word>[^}]*))?\}(?P<rest>.*)$")
TENANTS = "/etc/llmq/tenants.toml"


def _services() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


def _bind_mounts() -> list[tuple[str, str]]:
    """(service, host source) of each short-syntax bind mount (not a named volume)."""
    mounts = []
    for name, service in _services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if not volume.startswith("$") else volume
            if source.startswith(("$", ".", "/")):
                mounts.append((name, source))
    return mounts


def test_every_bind_mount_is_in_the_checkout_or_a_required_variable() -> None:
    """A default of a variable is a path too, and must exist like any other."""
    mounts = _bind_mounts()
    assert mounts
    for service, source in mounts:
        found = VARIABLE.match(source)
        if found is None:
            path = source
        elif found["op"] == "?":
            assert found["word"].strip(), f"{service}: a required variable says what it wants"
            continue
        else:
            assert found["op"] == "-", f"{service}: {source} mounts nothing when unset"
            path = found["word"] + found["rest"].split(":")[0]
        assert (ROOT / path).exists(), f"{service} mounts {path}, which is not in the checkout"


def test_the_stream_processor_reads_the_front_doors_tenants_file() -> None:
    """Rate limits and budgets are the stream processor's (streams/settings.py), keys the
    front door's: both read the one file, or the limits would not apply under compose."""
    services = _services()
    mounts = {name: set(services[name].get("volumes", [])) for name in ("streams", "gateway")}
    [tenants] = [v for v in mounts["gateway"] if v.split(":")[-2] == TENANTS]
    assert tenants in mounts["streams"]
    for name in ("streams", "gateway"):
        assert services[name]["environment"]["LLMQ_TENANTS_FILE"] == TENANTS


def test_the_example_tenants_file_would_not_start_the_front_door() -> None:
    """Why compose requires LLMQ_TENANTS_FILE rather than defaulting to the example: it has no
    [api_keys], and the front door listens on 0.0.0.0 in its container."""
    settings = GatewaySettings(tenants_file=ROOT / "examples" / "tenants.toml", api_host="0.0.0.0")
    with pytest.raises(ValueError, match="no API keys"):
        settings.policy()


def test_composes_kafka_keeps_prompts_and_answers_at_most_30_hours() -> None:
    """As the local stack's: a day's retention, segments rolled every six hours."""
    env = _services()["kafka"]["environment"]
    assert int(env["KAFKA_LOG_RETENTION_HOURS"]) + int(env["KAFKA_LOG_ROLL_HOURS"]) <= 30
