"""deploy/k8s as a cluster older than the newest takes it: the API the manifests use, the
metrics port they name, and the image tag they run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OLDEST = "1.27.0"
"""The oldest Kubernetes deploy/k8s/README.md names."""


def _manifests() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _pods() -> list[dict[str, Any]]:
    """The pod templates of every Deployment and Job."""
    return [d["spec"]["template"] for d in _manifests() if d["kind"] in ("Deployment", "Job")]


def test_the_oldest_kubernetes_named_takes_every_manifest() -> None:
    """The front door's preStop used the sleep action, which Kubernetes 1.27 and 1.28 refuse
    (1.29 behind a feature gate): `kubectl apply -k` failed there."""
    assert (
        f"**Kubernetes** {OLDEST.removesuffix('.0')} or later"
        in K8S.joinpath("README.md").read_text()
    )
    docs = [d for d in _manifests() if d["kind"] != "ScaledObject"]  # KEDA's, not Kubernetes'
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, OLDEST, strict=True)


def test_the_metrics_port_is_the_one_the_manifests_name() -> None:
    """The ConfigMap offered LLMQ_METRICS_PORT while the ports, probes and scrape annotations
    said 9100: changed, the pods served /metrics where their liveness probe never looked."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    [port] = re.findall(r"LLMQ_METRICS_PORT=(\d+)", dockerfile)
    configmap = yaml.safe_load(K8S.joinpath("configmap.yaml").read_text())
    assert "LLMQ_METRICS_PORT" not in configmap["data"]
    for pod in _pods():
        for container in pod["spec"]["containers"]:
            env = {e["name"] for e in container.get("env", [])}
            assert "LLMQ_METRICS_PORT" not in env
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            if "metrics" in ports:
                assert ports["metrics"] == int(port)
                assert pod["metadata"]["annotations"]["prometheus.io/port"] == port


def test_the_image_is_tagged_with_its_release() -> None:
    """A reused `gpu` tag: a node that has an image of it runs that one (IfNotPresent), so a
    re-pushed tag leaves pods on mixed versions."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    [image] = yaml.safe_load(K8S.joinpath("kustomization.yaml").read_text())["images"]
    assert image["newTag"] == f"{version}-gpu"
    readme = K8S.joinpath("README.md").read_text()
    assert "-t REGISTRY/llmq:<version>-gpu ." in readme and "llmq:gpu" not in readme
