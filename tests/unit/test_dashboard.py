"""deploy/grafana and deploy/prometheus/rules.yml query only what the services export, by
the names and labels prometheus_client gives them, and docker-compose's grafana service is
given the files that exist."""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "llmq.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "llmq.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus"
SERVICES = ["streams", "workers", "gateway", "autoscaler"]

SERIES_SUFFIXES = {
    "counter": ["_total", "_created"],
    "gauge": [""],
    "histogram": ["_bucket", "_count", "_sum", "_created"],
    "summary": ["", "_count", "_sum", "_created"],
    "info": ["_info"],
    "stateset": [""],
}
"""The series prometheus_client exports for a family of each type, by suffix: a Counter
named X (or X_total) is the family X with the series X_total."""
METRIC_TYPES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
TARGET_LABELS = frozenset({"job", "instance"})
"""Prometheus adds them to every series it scrapes."""

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
NAME = re.compile(r"(?<![\w:])llmq[_:][\w:]*")
SELECTOR = re.compile(r"(?<![\w:])(llmq_\w+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
AGGREGATION = re.compile(
    r"\b(sum|min|max|avg|group|stddev|stdvar|count|count_values|bottomk|topk|quantile)\s*"
    r"(?:(?:by|without)\s*\([^)]*\)\s*)?$"
)
"""An aggregation operator (with its grouping, if before) right before the `(` it opens."""


def _metric_modules() -> list[str]:
    """The services' modules that make metrics: those importing a metric type from
    prometheus_client (metrics.py in each, and the worker's circuit breaker)."""
    modules = []
    for package in SERVICES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            if any(
                isinstance(node, ast.ImportFrom)
                and node.module == "prometheus_client"
                and METRIC_TYPES & {alias.name for alias in node.names}
                for node in ast.walk(tree)
            ):
                modules.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return modules


def _families() -> dict[str, dict[str, frozenset[str]]]:
    """Every metric family the services export: its series, each with the labels it carries
    in Prometheus."""
    families: dict[str, dict[str, frozenset[str]]] = {}
    for name in _metric_modules():
        for metric in vars(importlib.import_module(name)).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            [family] = metric.describe()
            # prometheus_client has no public reader of a metric's label names.
            labels = frozenset(metric._labelnames) | TARGET_LABELS
            families[family.name] = {
                family.name + suffix: labels | ({"le"} if suffix == "_bucket" else set())
                for suffix in SERIES_SUFFIXES[family.type]
            }
    return families


FAMILIES = _families()
EXPORTED = {name: labels for series in FAMILIES.values() for name, labels in series.items()}
POOL_FIGURES = frozenset(
    name
    for name, labels in EXPORTED.items()
    if name.startswith("llmq_autoscaler_") and "model" in labels
)
"""The autoscaler's figures of each pool: every autoscaler running (two during a rollout)
reports the same ones, so a sum over them counts them twice."""


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels() -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    panels: list[dict[str, Any]] = []
    for panel in _dashboard()["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return panels


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


RECORDED = {rule["record"] for rule in _rules() if "record" in rule}


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard and of rules.yml."""
    queries = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in _panels()
        for target in panel.get("targets", [])
    ]
    queries += [(rule.get("record") or rule["alert"], rule["expr"]) for rule in _rules()]
    return queries


def _unknown_names(expr: str) -> list[str]:
    """llmq's series that `expr` reads and the services do not export, and recording-rule
    names (llmq:...) that rules.yml does not record."""
    names = NAME.findall(STRING.sub('""', expr))
    return [n for n in names if n not in (RECORDED if ":" in n else EXPORTED)]


def _unknown_labels(expr: str) -> list[str]:
    """Labels that `expr` matches on a series of llmq's, or groups by, that the series it
    reads do not carry. Grouping is checked where it reads no recording rule."""
    expr = STRING.sub('""', expr)
    unknown = [
        f"{name}{{{label}}}"
        for name, matchers in SELECTOR.findall(expr)
        for label in MATCHER.findall(matchers)
        if label not in EXPORTED.get(name, frozenset())
    ]
    names = NAME.findall(expr)
    if names and not any(":" in n for n in names):
        carried = frozenset().union(*(EXPORTED.get(n, frozenset()) for n in names))
        grouped = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",")}
        unknown += sorted(f"by ({label})" for label in grouped - carried - {""})
    return unknown


def _pool_figures_not_maxed(expr: str) -> list[str]:
    """The autoscaler's pool figures that `expr` reads whose innermost aggregation is not a
    max (or that it reads without aggregating)."""
    expr = STRING.sub('""', expr)
    opened: list[str | None] = []  # the aggregation each open `(` belongs to, if any
    wrong = []
    for token in re.finditer(r"[()]|(?<![\w:])llmq_\w+", expr):
        if token[0] == "(":
            aggregation = AGGREGATION.search(expr, 0, token.start())
            opened.append(aggregation[1] if aggregation else None)
        elif token[0] == ")":
            opened.pop()
        elif token[0] in POOL_FIGURES:
            innermost = next((a for a in reversed(opened) if a), None)
            if innermost != "max":
                wrong.append(f"{innermost}({token[0]})" if innermost else token[0])
    return wrong


def test_the_exported_series_follow_prometheus_client() -> None:
    """A Counter is read as X_total, a Histogram as X_bucket/_sum/_count; every service's
    metrics are found, the breaker's gauge outside a metrics module too."""
    assert "llmq_streams_metered_usd_total" in EXPORTED
    assert "llmq_streams_metered_usd" not in EXPORTED
    assert "llmq_streams_requests_total" in EXPORTED
    assert "llmq_streams_requests_total_total" not in EXPORTED
    assert "llmq_result_latency_seconds_bucket" in EXPORTED
    assert "llmq_result_latency_seconds" not in EXPORTED
    assert EXPORTED["llmq_worker_queue_seconds_bucket"] == {"lane", "le", "job", "instance"}
    assert EXPORTED["llmq_worker_breaker_state"] == {"model", "job", "instance"}
    for service in ["streams", "worker", "gateway", "autoscaler"]:
        assert f"llmq_{service}_ready" in EXPORTED


def test_the_checks_find_wrong_names_and_labels() -> None:
    assert _unknown_names('rate(llmq_streams_metered_usd[5m]) + llmq:nope{a="llmq_x"}') == [
        "llmq_streams_metered_usd",
        "llmq:nope",
    ]
    ttft = 'sum by (le, model) (rate(llmq_worker_ttft_seconds_bucket{lane="a"}[5m]))'
    assert _unknown_labels(ttft) == ["llmq_worker_ttft_seconds_bucket{lane}", "by (model)"]
    assert _unknown_labels("sum by (lane) (llmq:worker_completion_tokens:rate5m)") == []
    backlog = "llmq_autoscaler_backlog_records"
    assert _pool_figures_not_maxed(f"sum by (model) ({backlog}) + {backlog}") == [
        f"sum({backlog})",
        backlog,
    ]
    changes = "increase(llmq_autoscaler_changes_total[5m])"
    assert _pool_figures_not_maxed(f"sum(max by (model) ({changes})) > sum({changes})") == [
        "sum(llmq_autoscaler_changes_total)"
    ]
    assert _pool_figures_not_maxed("sum(llmq_autoscaler_ready)") == []  # a count of them


def test_the_dashboard_panels_have_unique_ids_titles_and_queries() -> None:
    dashboard, panels = _dashboard(), _panels()
    assert dashboard["uid"] == "llmq"
    assert dashboard["schemaVersion"] >= 39
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    assert all(panel["title"].strip() for panel in panels)
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert len(graphs) > 30
    for panel in graphs:
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_a_panel_of_increases_is_not_per_second() -> None:
    """increase() over a window is a count, not a rate: a per-second unit would mislabel it."""
    per_second = {"reqps", "ops", "rps", "wps", "iops", "cps", "suffix: tok/s"}
    for panel in _panels():
        exprs = [target["expr"] for target in panel.get("targets", [])]
        if exprs and all("increase(" in expr for expr in exprs):
            assert panel["fieldConfig"]["defaults"].get("unit") not in per_second, panel["title"]


def test_the_dashboard_reads_the_provisioned_prometheus() -> None:
    [source] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["global"]
    assert source["jsonData"]["timeInterval"] == scrape["scrape_interval"]
    wanted = {"type": "prometheus", "uid": source["uid"]}
    for panel in _panels():
        if panel["type"] != "row":
            assert panel["datasource"] == wanted, panel["title"]
            assert all(t["datasource"] == wanted for t in panel["targets"]), panel["title"]


@pytest.mark.parametrize("expr", [pytest.param(expr, id=where) for where, expr in _queries()])
def test_every_query_reads_series_the_services_export(expr: str) -> None:
    assert (_unknown_names(expr), _unknown_labels(expr)) == ([], [])


@pytest.mark.parametrize("expr", [pytest.param(expr, id=where) for where, expr in _queries()])
def test_every_query_takes_the_highest_of_the_autoscalers_figures(expr: str) -> None:
    """As several autoscalers may report a pool (a rollout runs two), a query reads the
    highest of their figures before it sums any."""
    assert _pool_figures_not_maxed(expr) == []


def test_every_metric_the_services_export_is_on_the_dashboard() -> None:
    """A metric nobody can see is one nobody watches: a new one gets a panel."""
    queries = [target["expr"] for panel in _panels() for target in panel.get("targets", [])]
    rules = set(NAME.findall(" ".join(queries))) & RECORDED
    queries += [rule["expr"] for rule in _rules() if rule.get("record") in rules]
    shown = set(NAME.findall(STRING.sub('""', " ".join(queries))))
    assert {family for family, series in FAMILIES.items() if not shown & set(series)} == set()


def test_compose_gives_grafana_its_provisioning_and_dashboards() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"])
    assert "prometheus" in grafana["depends_on"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, target, mode = volume.split(":")
        assert mode == "ro", volume
        assert (ROOT / source).is_dir(), volume
        mounts[(ROOT / source).resolve()] = target
    assert mounts[GRAFANA / "provisioning"] == "/etc/grafana/provisioning"
    dashboards = mounts[GRAFANA / "dashboards"]
    [provider] = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["options"]["path"] == dashboards
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards}/{DASHBOARD.name}"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
