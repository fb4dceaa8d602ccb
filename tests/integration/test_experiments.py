"""An A/B test on the real stack: requests for an experiment's name go to each tenant's arm,
the arm rides on every result and metering event, and `llmq costs --experiment` compares the
arms (the experiment is in conftest.py's catalog)."""

from __future__ import annotations

import json
import time

import pytest

from llmq.cli import main
from llmq.client import Client, tail
from schemas.catalog import Catalog
from schemas.metering import MeteringEvent
from schemas.names import METERING
from schemas.request import CacheMode
from schemas.settings import ServiceSettings
from streams.experiments import arm_of
from tests.integration.helpers import collect
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TENANTS = [f"ab-{i}" for i in range(8)]


def test_each_tenant_keeps_its_arm_and_the_arms_are_compared(
    client: Client,
    stack: LocalStack,
    service_settings: ServiceSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    catalog = Catalog.load(stack.settings.models_file)
    experiment = catalog.experiment("smollm2-ab")
    assert experiment is not None
    arms = {t: arm_of(experiment, t) for t in TENANTS}
    models = {arm.name: arm.model for arm in experiment.arms}
    assert {a.name for a in arms.values() if a} == set(models), "both arms have tenants"
    metering = tail(service_settings.kafka_bootstrap, METERING)
    ids = {
        client.submit(
            f"Say a number. ({tenant} {n})",
            tenant=tenant,
            model="smollm2-ab",
            max_tokens=4,
            temperature=0.0,
            cache=CacheMode.OFF,
        ): tenant
        for tenant in TENANTS
        for n in range(2)
    }
    results = {cid: client.result(cid, tenant=t, timeout=300) for cid, t in ids.items()}
    for cid, result in results.items():
        arm = arms[ids[cid]]
        assert arm is not None and result.route is not None
        assert result.status == "ok", result.error
        assert (result.route.experiment, result.route.arm) == (experiment.name, arm.name)
        assert (result.route.requested, result.model_used) == ("smollm2-ab", models[arm.name])
        assert result.cost_usd is not None and result.cost_usd > 0
    records = collect(
        metering,
        done=lambda rs: set(ids) <= {_event(r.value).correlation_id for r in rs},
        timeout_s=60,
    )
    metering.close()
    for event in (_event(r.value) for r in records):
        if event.correlation_id in ids:
            arm = arms[event.tenant]
            assert arm is not None and (event.experiment, event.arm) == (experiment.name, arm.name)
    monkeypatch.setenv("LLMQ_REDIS_URL", stack.settings.redis_url)
    deadline = time.monotonic() + 30
    while True:
        assert main(["costs", "--experiment", experiment.name, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        answered = {a["arm"]: a["answers"] for a in report["arms"]}
        if sum(answered.values()) >= len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    expected = {name: 2 * sum(1 for a in arms.values() if a and a.name == name) for name in models}
    assert answered == expected
    for arm in report["arms"]:
        low, high = arm["cost_interval"]
        assert low <= arm["cost_per_request"] <= high
        assert arm["error_rate"] == 0
    assert main(["costs", "--experiment", experiment.name]) == 0
    print(capsys.readouterr().out)


def _event(value: bytes | None) -> MeteringEvent:
    return MeteringEvent.model_validate_json(value or b"")
