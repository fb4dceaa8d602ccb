"""deploy/prometheus/rules.yml is valid and its alerts fire when they should: promtool (from
Debian's prometheus package, installed by deploy/install.sh) checks the rules and runs their
unit tests in deploy/prometheus/rules_test.yml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


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


def test_every_budget_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    budget = {
        rule["alert"]
        for group in rules["groups"]
        if group["name"] == "llmq.budgets"
        for rule in group["rules"]
    }
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert budget == {"LlmqBudgetHalfSpent", "LlmqBudgetMostlySpent", "LlmqBudgetExhausted"}
    assert budget <= fired
