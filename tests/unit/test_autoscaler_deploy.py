"""KEDA's side of the autoscaler (deploy/k8s/scaledobject-*.yaml): a missing figure must
not read as 0 and stop a busy pool."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
SCALED = sorted(K8S.glob("scaledobject-*.yaml"))
AUTOSCALING_DOC = K8S.parents[1] / "docs" / "autoscaling.md"
KEDA_ISSUE = "kedacore/keda#7239"


def _scaled_object(path: Path) -> dict[str, Any]:
    [doc] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert doc["kind"] == "ScaledObject"
    return dict(doc)


def test_there_are_scaled_objects() -> None:
    assert SCALED


@pytest.mark.parametrize("path", SCALED, ids=lambda p: p.name)
def test_a_missing_figure_is_an_error_with_a_fallback_not_a_zero(path: Path) -> None:
    """KEDA's Prometheus scaler reads a query without a series (the autoscaler restarting)
    as 0 unless ignoreNullValues is "false"; the fallback (AverageValue triggers only) then
    runs the most; the HPA waits a while before it scales down at all."""
    spec = _scaled_object(path)["spec"]
    [trigger] = spec["triggers"]
    meta = trigger["metadata"]
    assert meta["ignoreNullValues"] == "false"
    assert all(isinstance(v, str) for v in meta.values())  # KEDA's metadata: strings only
    assert trigger.get("metricType", "AverageValue") == "AverageValue"
    assert spec["fallback"] == {"failureThreshold": 3, "replicas": spec["maxReplicaCount"]}
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0


def test_a_pool_is_sized_by_its_own_installs_figure() -> None:
    """Another llmq in the same cluster reports the same model's figure: the query selects
    this install's namespace (test_architecture), a label the documented relabelling gives
    every series."""
    snippet = (K8S / "README.md").read_text().split("relabel_configs:")[1].split("```")[0]
    configs = yaml.safe_load(textwrap.dedent("relabel_configs:" + snippet))["relabel_configs"]
    named = {c["target_label"]: c["source_labels"] for c in configs}
    assert named["namespace"] == ["__meta_kubernetes_namespace"]


def test_no_manifest_says_keda_reads_kafka() -> None:
    """The triggers are Prometheus ones: a comment that KEDA reads the Kafka bootstrap
    misleads whoever changes it."""
    kafka = any(t["type"] == "kafka" for p in SCALED for t in _scaled_object(p)["spec"]["triggers"])
    assert kafka or "bootstrapServersFromEnv" not in (K8S / "configmap.yaml").read_text()


@pytest.mark.parametrize("path", SCALED, ids=lambda p: p.name)
def test_a_pool_that_may_go_to_zero_is_not_promised_the_fallback(path: Path) -> None:
    """KEDA applies no fallback to a workload at zero replicas (kedacore/keda#7239): with
    minReplicaCount 0 (KEDA's default) a pool stays at zero while the figure is missing, and
    its manifest and docs/autoscaling.md say so."""
    if _scaled_object(path)["spec"].get("minReplicaCount", 0) == 0:
        assert KEDA_ISSUE in path.read_text()
        assert KEDA_ISSUE in AUTOSCALING_DOC.read_text()
