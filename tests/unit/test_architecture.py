"""The layout's rules: imports run one way, the client library stays light, settings are the
only readers of the environment, and what deploy/ names is what schemas/names.py makes."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from autoscaler.metrics import DESIRED
from schemas import names
from schemas.catalog import Catalog, ModelSpec

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["llmq", "schemas", "streams", "workers", "gateway", "autoscaler", "tools"]
DESIRED_METRIC = "llmq_autoscaler_desired_replicas"
HEAVY = ["torch", "vllm", "transformers", "matplotlib", "faust"]
"""What an app that imports llmq, or `llmq submit`, must not pay for."""


def test_the_import_rule_holds() -> None:
    """tools -> the services -> llmq -> schemas ([tool.importlinter])."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    "code",
    [
        "import llmq",
        # `llmq submit`: the whole command line is built (every tool registers its command),
        # then the submit path runs up to the send.
        "from llmq.cli import parser; args = parser().parse_args(['submit', 'hi']);"
        "from llmq.settings import ClientSettings; ClientSettings()",
        # The front door is an app of llmq: as light as its client library.
        "import gateway.__main__",
    ],
)
def test_the_client_library_and_front_door_import_no_engine_model_or_plotting_library(
    code: str,
) -> None:
    assert _heavy_imports(code) == "[]", code


def _heavy_imports(code: str) -> str:
    """The HEAVY modules that running `code` in a fresh interpreter imports."""
    probe = f"{code}\nimport sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_stream_processor_without_the_semantic_cache_imports_no_torch() -> None:
    """Its embedder is what needs torch (and most of its memory): off, none is loaded."""
    code = (
        "from streams.app import build; from streams.settings import StreamSettings;"
        "build(StreamSettings(semantic_cache=False))"
    )
    assert _heavy_imports(code) == "['faust']"


def _environment_reads(path: Path, root: Path = ROOT) -> list[str]:
    """Where a module reads a variable from the environment itself: os.getenv,
    os.environ.get/setdefault/pop, os.environ[...] or `in os.environ`. Passing the whole
    environment on to a child process ({**os.environ}, .copy()) and writing to it is fine."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, name = ast.unparse(node.func.value), node.func.attr
            if (owner, name) == ("os", "getenv") or (
                owner == "os.environ" and name in {"get", "setdefault", "pop"}
            ):
                found.append(f"{path.relative_to(root)}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            if ast.unparse(node.value) == "os.environ":
                found.append(f"{path.relative_to(root)}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, ast.Compare) and any(
            ast.unparse(c) == "os.environ" for c in node.comparators
        ):
            found.append(f"{path.relative_to(root)}:{node.lineno} {ast.unparse(node)}")
    return found


def test_only_settings_modules_read_the_environment() -> None:
    """Each process reads its LLMQ_* variables through one validated settings object."""
    modules = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(modules) > 90
    reads = [r for p in modules if p.name != "settings.py" for r in _environment_reads(p)]
    assert reads == []


def test_the_environment_check_finds_reads(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n"
        "a = os.environ.get('A')\nb = os.getenv('B')\nc = os.environ['C']\n"
        "d = 'D' in os.environ\nos.environ['E'] = '1'\nf = {**os.environ}\n"
        "os.environ.update({'G': '1'})\n"
    )
    found = _environment_reads(module, tmp_path)
    assert [line.split()[0].rsplit(":", 1)[1] for line in found] == ["2", "3", "4", "5"]


def test_every_integration_module_is_marked_integration() -> None:
    """The marker is how `-m "not integration"` skips them, and the run's order
    (tests/conftest.py) would take an unmarked one for a unit test."""
    modules = sorted((ROOT / "tests" / "integration").glob("test_*.py"))
    assert len(modules) > 20
    unmarked = [
        p.name
        for p in modules
        if not any(
            isinstance(node, ast.Assign)
            and [ast.unparse(t) for t in node.targets] == ["pytestmark"]
            and "pytest.mark.integration" in ast.unparse(node.value)
            for node in ast.parse(p.read_text(encoding="utf-8")).body
        )
    ]
    assert unmarked == []


def test_the_image_carries_every_package_that_is_installed() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    installed = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = set(
        re.findall(r"^COPY (\w+) \./\1$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    )
    assert installed == set(PACKAGES)
    assert copied == installed


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_topics_in_deploy_come_from_the_topic_plan() -> None:
    """docker-compose and the k8s Job create topics with `llmq topics --create` (the plan for
    the catalog they are given), not from a list of their own."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["topics"]["command"] == ["llmq", "topics", "--create"]
    [job] = _documents(ROOT / "deploy" / "k8s" / "topics-job.yaml")
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["llmq", "topics", "--create"]
    assert container["image"] == "llmq"


def _k8s() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += _documents(path)
    return docs


def test_every_catalog_model_has_a_worker_pool_sized_by_the_autoscaler() -> None:
    docs = _k8s()
    scaled = {
        d["metadata"]["labels"]["llmq.io/model"]: d for d in docs if d["kind"] == "ScaledObject"
    }
    workers = {
        d["metadata"]["labels"]["llmq.io/model"]: d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["labels"].get("llmq.io/model")
    }
    assert set(scaled) == set(workers) == set(Catalog.builtin().names)
    for model, obj in scaled.items():
        assert obj["spec"]["scaleTargetRef"]["name"] == workers[model]["metadata"]["name"]
        [trigger] = obj["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        # This install's figure alone: its namespace, as the kustomization sets it.
        namespace = _documents(ROOT / "deploy" / "k8s" / "kustomization.yaml")[0]["namespace"]
        assert query == f'max({DESIRED_METRIC}{{namespace="{namespace}",model="{model}"}})'
        assert trigger["metadata"]["threshold"] == "1"
        [container] = workers[model]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["LLMQ_MODEL"] == model
        grace = workers[model]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > int(env["LLMQ_DRAIN_TIMEOUT_S"]) + 30  # the drain, then the engine


@pytest.mark.parametrize(
    "kind",
    ["Deployment", "Service", "Job", "ConfigMap", "Secret", "Namespace", "PodDisruptionBudget"],
)
def test_the_manifests_are_valid_kubernetes(kind: str) -> None:
    """Against Kubernetes' own schemas (kubernetes-validate ships them); KEDA's
    ScaledObject is checked by the test above."""
    docs = [d for d in _k8s() if d["kind"] == kind]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, "1.32.0", strict=True)


def test_a_node_drain_evicts_one_pod_of_each_deployment_at_a_time() -> None:
    """Every long-running Deployment (the topics Job's pod aside) has a disruption budget of
    one pod that selects exactly its pods: a drain never takes a whole pool or both
    replicas at once."""
    docs = _k8s()
    budgets = {
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items())): d
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
    }
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    for deployment in deployments:
        selector = tuple(sorted(deployment["spec"]["selector"]["matchLabels"].items()))
        if deployment["metadata"]["name"] == "llmq-autoscaler":
            continue  # one replica by design: its figure is missing for a restart's length
        budget = budgets.pop(selector)
        assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": dict(selector)}}
    assert budgets == {}, "a budget that selects no Deployment's pods"


def test_probes_wait_for_a_busy_process() -> None:
    """Probes answered on a loop that serves traffic: the kubelet's default timeout, 1 s,
    would take a busy pod for a hung one."""
    for doc in _k8s():
        if doc["kind"] != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe].get("timeoutSeconds", 1) >= 5, (
                        doc["metadata"]["name"],
                        probe,
                    )


def test_the_stream_processor_reads_the_front_doors_tenants_secret() -> None:
    """Rate limits and budgets are applied at the stream processor's admission, API keys at
    the front door: both read the one file, or no limit would hold (docker-compose's twin is
    in test_deploy_compose.py)."""
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in _k8s()
        if d["kind"] == "Deployment"
    }
    for name in ("llmq-streams", "llmq-gateway"):
        [container] = pods[name]["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        path = Path(env["LLMQ_TENANTS_FILE"])
        volumes = {v["name"]: v for v in pods[name]["volumes"]}
        [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
        assert volumes[mount["name"]]["secret"]["secretName"] == "llmq-tenants", name


def test_every_secret_a_pod_needs_is_one_the_operator_is_told_to_make() -> None:
    """A required Secret volume named nowhere in "Bring your own": `kubectl apply -k` left
    the pods in ContainerCreating (FailedMount) with no word in the README."""
    readme = (ROOT / "deploy" / "k8s" / "README.md").read_text()
    bring = readme.split("Bring your own:", 1)[1]
    for doc in _k8s():
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        secrets = [v["secret"] for v in pod.get("volumes", []) if "secret" in v]
        refs = [
            source["secretRef"]
            for container in pod["containers"]
            for source in container.get("envFrom", [])
            if "secretRef" in source
        ]
        for secret in secrets:
            if not secret.get("optional", False):
                assert f"`{secret['secretName']}`" in bring, doc["metadata"]["name"]
        for ref in refs:
            if not ref.get("optional", False):
                assert f"`{ref['name']}`" in bring, doc["metadata"]["name"]


def test_every_redis_name_is_in_the_readmes_list_of_keys() -> None:
    """Operators plan Redis's memory and ACLs from README's list: a key missing there (the
    hand-on marks, the loss token) was found only by SCAN."""
    readme = (ROOT / "README.md").read_text()
    for name, value in vars(names).items():
        if isinstance(value, str) and value.startswith("llmq:"):
            assert f"`{value}" in readme, name


def test_every_catalog_key_is_shown_to_the_operator() -> None:
    """A catalog refuses a key it does not know: one named nowhere but schemas/catalog.py
    was found only by reading the code."""
    shown = (ROOT / "README.md").read_text() + "".join(
        path.read_text() for path in (ROOT / "examples").glob("*.toml")
    )
    for name in ModelSpec.model_fields:
        assert re.search(rf"\b{name}\b", shown), name


def test_the_exported_metric_is_the_one_keda_reads() -> None:
    [family] = DESIRED.describe()
    assert family.name == DESIRED_METRIC
