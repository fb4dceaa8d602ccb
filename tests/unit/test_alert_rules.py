"""deploy/prometheus/rules.yml is valid and its alerts fire when they should: promtool (from
Debian's prometheus package, installed by deploy/install.sh) checks the rules and runs their
unit tests in deploy/prometheus/rules_test.yml; on Kubernetes, deploy/k8s/README.md's
relabelling gives llmq's pods, and theirs alone, the job names the rules read."""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
K8S = ROOT / "deploy" / "k8s"
POD_LABEL = "__meta_kubernetes_pod_label_"


def _promtool(*args: str) -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: deploy/install.sh installs it (apt: prometheus)")
    done = subprocess.run(
        [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_are_valid() -> None:
    assert "SUCCESS" in _promtool("check", "rules", "rules.yml")


def test_the_alerts_fire_as_their_unit_tests_say() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "rules_test.yml")


def test_every_alert_has_a_summary_a_unit_test_that_fires_it_and_a_row_in_the_docs() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    alerts = {
        rule["alert"]: rule
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert {"LlmqBudgetExhausted", "LlmqNoProgress", "LlmqCrashLooping"} <= alerts.keys()
    assert sorted(alerts.keys() - fired) == []
    unsummarised = [
        name for name, rule in alerts.items() if not rule.get("annotations", {}).get("summary")
    ]
    assert unsummarised == []
    documented = (ROOT / "docs" / "metrics.md").read_text().split("\n## Alerts\n")[1]
    assert sorted(a for a in alerts if f"| `{a}`" not in documented) == []


def _relabelled(config: dict[str, Any], labels: dict[str, str]) -> str | None:
    """The job a `replace` relabelling gives a pod with these labels (None: unchanged), as
    Prometheus does: each pod label is a meta label with its name's other characters made
    '_'; the source values are joined by ';' and the regex is anchored at both ends."""
    meta = {POD_LABEL + re.sub(r"\W", "_", name): value for name, value in labels.items()}
    values = ";".join(meta.get(name, "") for name in config["source_labels"])
    found = re.fullmatch(config["regex"], values)
    return None if found is None else str(config["replacement"]).replace("$1", found[1])


def test_the_k8s_relabelling_names_llmqs_pods_alone_as_the_rules_expect() -> None:
    readme = (K8S / "README.md").read_text()
    [snippet] = re.findall(r"```yaml\n(\s*relabel_configs:.*?)```", readme, re.DOTALL)
    configs = yaml.safe_load(textwrap.dedent(snippet))["relabel_configs"]
    [config] = [c for c in configs if c["target_label"] == "job"]
    pods = [
        doc["spec"]["template"]["metadata"]["labels"]
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] == "Deployment"
    ]
    jobs = {_relabelled(config, pod) for pod in pods}
    assert jobs == {"llmq-streams", "llmq-worker", "llmq-gateway", "llmq-autoscaler"}
    named = set(re.findall(r'job="(llmq-\w+)"', (PROMETHEUS / "rules.yml").read_text()))
    assert named and named <= jobs
    # Another app's pods that share a component name keep their job.
    other = {"app.kubernetes.io/part-of": "shop", "app.kubernetes.io/component": "gateway"}
    assert _relabelled(config, other) is None
    assert _relabelled(config, {"app.kubernetes.io/component": "worker"}) is None
