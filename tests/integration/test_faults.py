"""`llmq faults` for real, small: every fault scenario on a stack of its own (free ports, a
temporary state dir, three brokers for those that need them; the session's stack is not
touched), nothing accepted is lost, no duplicate contradicts the first answer, no scenario
finds a broken guarantee (its exit status), the scenarios in CHECKED have no timing finding
either, and the report goes where it was told."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import REPO
from tools.faults.plan import SCENARIOS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2760)]

CHECKED = [
    "kafka-stop",
    "crash-loop",
    "broker-kill",
    "streams-join",
    "autoscale-down",
    "batch-restarts",
]
"""Scenarios with no finding, broken or timing, but those TOLERATED."""
TOLERATED = (
    "(flapping)",
    "the decisions behind each start",
    "error replies it does not expect",
    "was not reached before the fault",
)
"""Timing findings reported but not failed on (a broken one fails the exit status). Error
replies that a fault may give where it outlasts a timeout (Scenario.timing_errors:
kafka-stop's and broker-kill's internal_error, autoscale-down's engine_timeout), which this
test never failed on. A wait before a fault that ran out on a slow machine (the row says it
did not test what it claims; before these were recorded, it passed silently). And
autoscale-down's autoscaler started its worker a second time in one of four runs
(2026-11-30). The kept logs of the CI run of 2026-12-01 (four starts, 48 lost) showed why:
a rate misread at one worker, since fixed; still only reported until runs show it gone.
The finding carries the decision behind each start."""


def test_every_fault_scenario_loses_nothing(llmq_bin: Path, tmp_path: Path) -> None:
    report, out = tmp_path / "RELIABILITY.md", tmp_path / "out"
    command = [
        *(str(llmq_bin), "faults", "--scale", "0.5", "--no-readme"),
        *("--report", str(report), "--out", str(out)),
    ]
    # The console script of this venv, importing this checkout.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=2700, check=False, env=env, cwd=tmp_path
    )
    said = done.stdout[-4000:] + done.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    outcomes = {o["scenario"]: o for o in doc["outcomes"]}
    assert list(outcomes) == list(SCENARIOS), said
    for name, outcome in outcomes.items():
        tally = outcome["tally"]
        assert tally is not None, (name, outcome["findings"])
        assert tally["accepted"] > 0, name
        assert tally["lost"] == 0, (name, tally["lost_ids"], outcome["findings"])
        assert tally["conflicting"] == 0, (name, outcome["findings"])
        failed = [
            f["text"]
            for f in outcome["findings"]
            if f["kind"] == "broken" or not any(t in f["text"] for t in TOLERATED)
        ]
        assert name not in CHECKED or failed == [], (name, outcome["findings"])
    assert outcomes["poison"]["tally"]["errors"] == {"invalid_request": 1, "unknown_model": 1}
    assert done.returncode == 0, said
    text = report.read_text(encoding="utf-8")
    assert "llmq faults --scale 0.5" in text
    assert all(outcome["fault"] in text for outcome in outcomes.values())
    assert not (tmp_path / "README.md").exists()
