"""Every labelled counter whose label values are known at start has its children at 0 from
the start: a child made at its first inc() starts at 1, which rate() and increase() take for
no rise, so the first batch failed, dead letter or rejection of each kind went unseen. A
budget's threshold counters are at 0 from the tenant's first labelling, before any crossing.
Each process is started in a fresh interpreter: no other test has counted anything there."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from prometheus_client import REGISTRY

from schemas.catalog import Catalog
from schemas.errors import ErrorCode
from schemas.lanes import Lane
from schemas.tenants import TenantLimits
from streams.budget_alerts import THRESHOLDS, BudgetAlerts
from streams.tenant_labels import TenantLabels

pytestmark = pytest.mark.timeout(60)

EXPOSE = "from prometheus_client import REGISTRY, generate_latest\n" + (
    "print(generate_latest(REGISTRY).decode())"
)
AUTOSCALER = """
from autoscaler.service import Autoscaler
from autoscaler.settings import AutoscalerSettings
Autoscaler(AutoscalerSettings(), None)
"""
MODELS = [spec.name for spec in Catalog.builtin().models]
STARTS = {
    "streams": (
        "import streams.metrics",
        [
            'llmq_streams_requests_total{outcome="admitted"}',
            'llmq_streams_requests_total{outcome="cache_semantic"}',
            'llmq_streams_speculations_total{outcome="late"}',
            'llmq_streams_reroutes_total{kind="fell_back"}',
            'llmq_streams_dead_letters_total{source="llmq.metering"}',
            'llmq_streams_completions_total{status="error"}',
            *(f'llmq_streams_rejections_total{{code="{code.value}"}}' for code in ErrorCode),
        ],
    ),
    "worker": (
        "import workers.metrics",
        [
            'llmq_worker_dead_letters_total{reason="crash_loop"}',
            'llmq_worker_dead_letters_total{reason="unreadable"}',
            'llmq_worker_generations_total{outcome="ok"}',
            'llmq_worker_generations_total{outcome="engine_error"}',
            'llmq_worker_tokens_total{kind="completion"}',
            *(f'llmq_worker_started_total{{lane="{lane.value}"}}' for lane in Lane),
        ],
    ),
    "gateway": (
        "import gateway.app",
        [
            'llmq_gateway_batches_total{status="failed"}',
            'llmq_gateway_batches_total{status="expired"}',
            'llmq_gateway_batch_lines_total{outcome="retry"}',
            'llmq_gateway_overloaded_total{bound="tenant"}',
            'llmq_gateway_requests_total{status="502",stream="true"}',
            'llmq_gateway_requests_total{status="200",stream="false"}',
        ],
    ),
    "autoscaler": (
        AUTOSCALER,
        [
            f'llmq_autoscaler_changes_total{{direction="{direction}",model="{model}"}}'
            for model in MODELS
            for direction in ("up", "down")
        ],
    ),
}


@pytest.mark.parametrize("process", sorted(STARTS))
def test_a_process_starts_with_its_counters_at_zero(process: str) -> None:
    start, expected = STARTS[process]
    exposed = subprocess.run(
        [sys.executable, "-c", f"{start}\n{EXPOSE}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=50,
    ).stdout.splitlines()
    assert [f"{sample} 0.0" for sample in expected if f"{sample} 0.0" not in exposed] == []


class Unsent:
    """Redis where no alert was sent yet (SET NX answers yes)."""

    async def set(self, *args: object, **kwargs: object) -> bool:
        return True


def _alerts(tenant: str) -> list[float | None]:
    return [
        REGISTRY.get_sample_value(
            "llmq_budget_alerts_total", {"tenant": tenant, "threshold": f"{threshold:g}"}
        )
        for threshold in THRESHOLDS
    ]


def test_a_tenants_budget_alerts_are_at_zero_before_its_first_crossing() -> None:
    sent: list[str] = []

    async def send(topic: str, key: bytes | None, value: bytes) -> None:
        sent.append(topic)

    alerts = BudgetAlerts(Unsent(), send, TenantLabels(set()))  # type: ignore[arg-type]
    limits = TenantLimits(budget_usd=10.0)
    assert _alerts("zero-budgeted") == [None] * len(THRESHOLDS)
    alerts.admitted("zero-budgeted", limits, 1.0)
    assert _alerts("zero-budgeted") == [0.0] * len(THRESHOLDS)
    asyncio.run(alerts.spent("zero-budgeted", limits, 6.0, 1e9))
    assert _alerts("zero-budgeted") == [1.0, 0.0, 0.0] and len(sent) == 1


def test_a_tenant_without_a_budget_has_no_alert_counters() -> None:
    alerts = BudgetAlerts(Unsent(), None, TenantLabels(set()))  # type: ignore[arg-type]
    alerts.admitted("zero-unbudgeted", TenantLimits(), 1.0)
    asyncio.run(alerts.spent("zero-unbudgeted", TenantLimits(), 6.0, 1e9))
    assert _alerts("zero-unbudgeted") == [None] * len(THRESHOLDS)
