"""The `tenant` label is bounded: tenants the tenants file names keep their name, as do the
first LLMQ_METRICS_TENANTS others a process labels; the rest are "other" in the cost
counters and have no budget gauge. Redis is a fake here; the app's wiring is checked in a
fresh interpreter (it also turns prometheus-client's _created series off, process-wide)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from pydantic import ValidationError

from llmq.pipelined import Pipelined
from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.tenants import TenantLimits, TenantPolicy, key_hash
from streams.rollups import CostRollups
from streams.settings import StreamSettings
from streams.tenant_labels import DEFAULT_LIMIT, OTHER, TenantLabels

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
LIMITS = TenantLimits(budget_usd=10.0)


def test_named_tenants_keep_their_name_and_the_first_others_theirs() -> None:
    labels = TenantLabels({"acme"}, 2)
    assert [labels.label(t) for t in ["u1", "u2", "u3", "acme", "u1", "u4"]] == [
        "u1",
        "u2",
        OTHER,
        "acme",
        "u1",
        OTHER,
    ]
    assert TenantLabels(set(), 0).label("u1") == OTHER


def test_the_tenants_file_names_tenants_by_their_limits_and_their_api_keys() -> None:
    policy = TenantPolicy(
        tenants={"limited": TenantLimits(requests_per_minute=5)},
        api_keys={key_hash("llmq-k"): "keyed"},
    )
    labels = TenantLabels.of(policy, 0)
    assert [labels.label(t) for t in ["limited", "keyed", "anyone"]] == ["limited", "keyed", OTHER]


class Counting:
    """Redis whose rollup script counts every event (as the first delivery of each)."""

    def register_script(self, script: str) -> Any:
        return SimpleNamespace(sha="sha")

    def pipeline(self, transaction: bool) -> Any:
        queued: list[tuple[tuple[object, ...], dict[str, object]]] = []

        async def execute(raise_on_error: bool) -> list[int]:
            return [1 for _ in queued]

        return SimpleNamespace(
            command_stack=queued,
            connection_pool=SimpleNamespace(get_encoder=lambda: SimpleNamespace(encode=str)),
            evalsha=lambda *command: queued.append((command, {})),
            execute=execute,
        )


def _event(tenant: str) -> MeteringEvent:
    return MeteringEvent(
        correlation_id=f"c-{tenant}",
        tenant=tenant,
        model="bound-model",
        lane=Lane.BATCH,
        fingerprint="f",
        prompt_tokens=3,
        completion_tokens=4,
        cost_usd=0.5,
        queue_ms=1.0,
        ttft_ms=None,
        engine_ms=1.0,
        worker="w",
    )


def _events(tenant: str) -> float | None:
    return REGISTRY.get_sample_value(
        "llmq_costs_events_total",
        {"tenant": tenant, "model": "bound-model", "lane": "batch", "cache": "none"},
    )


def _counts() -> list[float]:
    """The events counted for bound-first, bound-named and other, and other's completion
    tokens: process-wide, so a test reads what it adds (run twice, it found the first run's)."""
    events = [_events(tenant) for tenant in ("bound-first", "bound-named", OTHER)]
    labels = {"tenant": OTHER, "model": "bound-model", "kind": "completion"}
    tokens = REGISTRY.get_sample_value("llmq_costs_tokens_total", labels)
    return [n or 0.0 for n in (*events, tokens)]


def test_cost_counters_label_tenants_past_the_limit_other() -> None:
    client = cast(aioredis.Redis, Counting())
    rollups = CostRollups(Pipelined(client), TenantLabels({"bound-named"}, 1))
    before = _counts()
    for tenant in ["bound-first", "bound-second", "bound-third", "bound-named"]:
        assert asyncio.run(rollups.add(_event(tenant)))
    added = [now - then for now, then in zip(_counts(), before, strict=True)]
    assert added == [1.0, 1.0, 2.0, 2 * 4.0]
    assert _events("bound-second") is _events("bound-third") is None


def test_the_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMQ_METRICS_TENANTS", raising=False)
    assert StreamSettings().metrics_tenants == DEFAULT_LIMIT == 100
    monkeypatch.setenv("LLMQ_METRICS_TENANTS", "0")
    assert StreamSettings().metrics_tenants == 0
    monkeypatch.setenv("LLMQ_METRICS_TENANTS", "-1")
    with pytest.raises(ValidationError):
        StreamSettings()


PROBE = """
import gc, json
from pathlib import Path
from prometheus_client import generate_latest
from streams.app import build
from streams.budget_alerts import BudgetAlerts
from streams.rollups import CostRollups
from streams.settings import StreamSettings

build(StreamSettings(semantic_cache=False, tenants_file=Path({file!r}), metrics_tenants=0))
found = [o for o in gc.get_objects() if isinstance(o, (CostRollups, BudgetAlerts))]
print(json.dumps({{
    "labels": sorted(
        (type(o).__name__, o._labels.label("bound-named"), o._labels.label("anyone"))
        for o in found
    ),
    "created": b"_created" in generate_latest(),
}}))
"""


def test_the_stream_processor_labels_by_its_tenants_file_without_created_series(
    tmp_path: Path,
) -> None:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text("[tenants.bound-named]\nrequests_per_minute = 5\n")
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(file=str(tenants))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    probed = json.loads(done.stdout.strip().splitlines()[-1])
    assert probed == {
        "labels": [
            ["BudgetAlerts", "bound-named", OTHER],
            ["CostRollups", "bound-named", OTHER],
        ],
        "created": False,
    }
