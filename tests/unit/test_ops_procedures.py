"""Day-2 operations as the docs and the CLI describe them: files read only at start, and the
order in which a model is removed from a Kubernetes deployment."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmq.cli import main

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def _manifests(kind: str) -> dict[str, dict[str, Any]]:
    """The manifests of deploy/k8s of one kind, by name."""
    docs = [doc for path in K8S.glob("*.yaml") for doc in yaml.safe_load_all(path.read_text())]
    return {d["metadata"]["name"]: d for d in docs if d and d.get("kind") == kind}


def test_a_new_key_says_the_front_door_must_restart(capsys: pytest.CaptureFixture[str]) -> None:
    """An operator who added the line and waited saw 401s: the file is read at start."""
    assert main(["keys", "new", "acme"]) == 0
    assert "The front door reads that file when it starts" in capsys.readouterr().out


def test_the_restarts_the_docs_ask_for_name_real_deployments() -> None:
    deployments = set(_manifests("Deployment"))
    docs = [K8S / "README.md", ROOT / "docs" / "metrics.md"]
    name = r"deployment/([a-z0-9-]+)(?![a-z0-9<-])"  # not llmq-worker-<model>
    named = {n for doc in docs for n in re.findall(name, doc.read_text())}
    assert {"llmq-gateway", "llmq-streams", "llmq-autoscaler"} <= named
    assert named <= deployments


def test_removing_a_model_quotes_the_fallback_a_scaled_object_applies() -> None:
    """An autoscaler rolled to a catalog without the model while its ScaledObject is still
    there scales a running pool to the fallback count: the README's procedure says so, with
    the manifests' figures."""
    readme = K8S.joinpath("README.md").read_text()
    procedure = readme.split("Removing a model", 1)[1]
    for name, scaled in _manifests("ScaledObject").items():
        fallback = scaled["spec"]["fallback"]
        manifest = f"scaledobject-{name.removeprefix('llmq-worker-')}.yaml"
        assert f"`failureThreshold: {fallback['failureThreshold']}`" in procedure
        assert f"{fallback['replicas']} in `{manifest}`" in procedure
