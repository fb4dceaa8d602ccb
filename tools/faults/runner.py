"""`llmq faults`: one local stack of its own on free ports, the chosen scenarios one after
another (the stack healed before each), and the results written as they come."""

from __future__ import annotations

import datetime
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tools.bench.runner import machine
from tools.faults import report
from tools.faults.load import Load
from tools.faults.outcome import Outcome
from tools.faults.probe import log_lines
from tools.faults.rig import Rig, Say
from tools.faults.scenarios import DRAIN_S, SCENARIOS
from tools.stack.ports import free_block
from tools.stack.settings import LocalSettings
from tools.stack.stack import LocalStack

STACK_PORTS = 7
"""Kafka, its controller, Redis, the stream processor's and the worker's /metrics, the front
door, and a second worker's /metrics (the scale-down scenario)."""
WARM_REQUESTS = 4


@dataclass(frozen=True)
class Written:
    """What a run wrote, and whether it lost anything."""

    report: Path
    results: Path
    readme: Path | None
    failed: list[str]
    """Scenarios with a lost request, a conflicting duplicate, or no tally."""


def run_faults(
    names: list[str],
    *,
    scale: float,
    cache_dir: Path,
    report_path: Path,
    out_dir: Path,
    readme: Path | None,
    command: str,
    say: Say = print,
    keep_state: bool = False,
) -> Written:
    """Start the stack, run each scenario, write results.json after each, then the report
    and (when given) the README's section; the stack goes down at the end."""
    state = Path(tempfile.mkdtemp(prefix="llmq-faults-"))
    base = free_block(STACK_PORTS)
    local = LocalSettings(
        state_dir=state,
        cache_dir=cache_dir,
        kafka_port=base,
        redis_port=base + 2,
        metrics_base_port=base + 3,
        api_port=base + 5,
        models_file=None,
        tenants_file=None,
        compress_prompts=False,
        autoscale=False,  # the scenarios start, kill and stop workers themselves
    )
    stack = LocalStack(local)
    rig = Rig(stack, spare_port=base + STACK_PORTS - 1, scale=scale, say=say)
    meta = {
        "command": command,
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "scale": scale,
        "state_dir": str(state),
    }
    results = out_dir / "results.json"
    outcomes: list[Outcome] = []
    say(f"starting a local stack in {state} (Kafka on port {base})")
    try:
        rig.heal()
        _warm(rig)
        for name in names:
            outcomes.append(_one(rig, name))
            report.write_json(outcomes, meta, results)
    finally:
        say("stopping the stack")
        stack.down(say=lambda _: None)
        if keep_state:
            say(f"its state and logs are kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
    report_path.write_text(report.report(outcomes, meta), encoding="utf-8")
    if readme is not None:
        report.update_readme(readme, report.section(outcomes, meta, report_path.name))
    return Written(report_path, results, readme, [o.scenario for o in outcomes if o.failed])


def _warm(rig: Rig) -> None:
    """A few requests through the whole path first, so no scenario pays for a cold start."""
    with Load(rig.bootstrap, "warm-up") as load:
        ids = [load.send(load.request()) for _ in range(WARM_REQUESTS)]
        if not load.wait_answered(ids, DRAIN_S):
            raise RuntimeError("the stack did not answer its warm-up requests")


def _one(rig: Rig, name: str) -> Outcome:
    """One scenario on a healed stack; any process that died or restarted during it, other
    than those it restarts on purpose, is a finding, with the last lines of its log."""
    scenario = SCENARIOS[name]
    rig.say(f"== {name}: {scenario.fault}")
    healed = rig.heal()
    if healed:
        rig.say(f"  (restarted before it: {', '.join(healed)})")
    before = rig.pids()
    start = time.monotonic()
    outcome = Outcome(name, scenario.fault)
    try:
        scenario.run(rig, outcome)
    except Exception as exc:  # a scenario that breaks is reported, and the run goes on
        outcome.findings.append(f"the scenario failed: {exc!r}")
    for proc_name, pid in rig.pids().items():
        role = "worker" if proc_name.startswith("worker-") else proc_name
        if pid == before[proc_name] or role in scenario.restarts:
            continue
        proc = rig.component(proc_name).proc
        what = "died" if pid is None else f"was restarted (pid {before[proc_name]} -> {pid})"
        said = " | ".join(log_lines(proc, run=-1 if pid is None else -2))
        outcome.findings.append(f"{proc_name} {what}; its log ends: {said}")
    t = outcome.tally
    summary = (
        "no tally"
        if t is None
        else f"{t.accepted} accepted, {t.replies} answered, {t.lost} lost, "
        f"{t.duplicates} duplicates ({t.conflicting} conflicting)"
    )
    rig.say(f"  {name}: {summary} in {time.monotonic() - start:.0f} s")
    for finding in outcome.findings:
        rig.say(f"  FINDING: {finding}")
    return outcome
