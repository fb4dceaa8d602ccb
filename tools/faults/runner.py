"""`llmq faults`: a local stack of its own on free ports (one broker, then a cluster of
three for the scenarios that need it), the chosen scenarios one after another (the stack
healed before each), and the results written as they come."""

from __future__ import annotations

import contextlib
import datetime
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from llmq.cli import uninterrupted
from schemas.names import work_topics, worker_group
from tools.bench.runner import machine
from tools.faults import report
from tools.faults.load import Load
from tools.faults.outcome import Outcome
from tools.faults.plan import SCENARIOS
from tools.faults.probe import Backlog, log_lines
from tools.faults.rig import Rig, Say, wait_moving
from tools.faults.scenarios import DRAIN_S, Scenario
from tools.files import write_whole
from tools.stack.ports import free_block
from tools.stack.settings import LocalSettings
from tools.stack.stack import LocalStack

WARM_REQUESTS = 4


@dataclass(frozen=True)
class Written:
    """What a run wrote, and whether it lost anything."""

    report: Path
    results: Path
    readme: Path | None
    failed: list[str]
    """Scenarios with a lost request, a conflicting duplicate, no tally, or a broken
    guarantee (Outcome.failed)."""


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
    """For each stack the chosen scenarios need (one broker, then three), start it, run
    its scenarios, write results.json after each, and take it down (its state and logs
    stay when asked, or when a scenario failed); then write the report and (when given)
    the README's section."""
    meta = {
        "command": command,
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "scale": scale,
    }
    results = out_dir / "results.json"
    outcomes: list[Outcome] = []
    for brokers in sorted({SCENARIOS[name].brokers for name in names}):
        state = Path(tempfile.mkdtemp(prefix=f"llmq-faults-{brokers}-"))
        stack = LocalStack(stack_settings(state, cache_dir, brokers))
        rig = Rig(stack, scale=scale, say=say)
        say(f"starting a local stack with {brokers} broker(s) in {state}")
        try:
            rig.heal()
            _warm(rig)
            for name in [n for n in names if SCENARIOS[n].brokers == brokers]:
                outcomes.append(_one(rig, name))
                report.write_json(outcomes, meta, results)
        finally:
            with uninterrupted("stopping the stack"):
                _said(say, "stopping the stack")
                stack.down(say=lambda _: None)
                if keep_state or any(o.failed for o in outcomes):
                    _said(say, f"its state and logs are kept in {state}")
                else:
                    shutil.rmtree(state, ignore_errors=True)
    write_whole(report_path, report.report(outcomes, meta))
    if readme is not None:
        report.update_readme(readme, report.section(outcomes, meta, report_path.name))
    return Written(report_path, results, readme, [o.scenario for o in outcomes if o.failed])


def _said(say: Say, line: str) -> None:
    """A line of the teardown, said where it can be: a terminal that hung up (EIO) or a
    reader gone must not leave the stack running, nor stand in for how the run ended."""
    with contextlib.suppress(OSError):
        say(line)


def stack_settings(state: Path, cache_dir: Path, brokers: int) -> LocalSettings:
    """A stack of its own on free ports: each broker's two, Redis, the /metrics of streams,
    the worker, the autoscaler, a second worker and a second streams, then the front door."""
    base = free_block(2 * brokers + 7)
    redis = base + 2 * brokers
    return LocalSettings(
        state_dir=state,
        cache_dir=cache_dir,
        kafka_port=base,
        brokers=brokers,
        redis_port=redis,
        metrics_base_port=redis + 1,
        api_port=redis + 6,
        models_file=None,
        tenants_file=None,
        compress_prompts=False,
        autoscale=False,  # the scenarios start, kill and stop workers (and the autoscaler)
        max_replicas=2,
    )


def _warm(rig: Rig) -> None:
    """A few requests through the whole path first, so no scenario pays for a cold start."""
    with Load(rig.bootstrap, "warm-up") as load:
        ids = [load.send(load.request()) for _ in range(WARM_REQUESTS)]
        if not load.wait_answered(ids, DRAIN_S):
            raise RuntimeError("the stack did not answer its warm-up requests")


def _leftover(rig: Rig) -> float:
    """Wait while the workers answer what an earlier scenario left in their topics (it
    would stand in front of this one's work), until none is left or DRAIN_S pass without
    their backlog falling; the records left then."""
    backlog = Backlog(rig.bootstrap, worker_group(rig.model.name), work_topics(rig.model.name))
    now = backlog()
    least = math.inf if now is None else now

    def drained() -> bool:
        nonlocal now, least
        now = backlog()
        least = least if now is None else min(least, now)
        return now == 0

    try:
        wait_moving(drained, lambda: -least, DRAIN_S, interval_s=1.0)
        return now or 0.0
    finally:
        backlog.close()


def _one(rig: Rig, name: str) -> Outcome:
    """One scenario on a healed stack with nothing of earlier ones left to answer; error
    replies it does not expect, and any process that died or restarted during it other
    than those it restarts on purpose (with the last lines of its log), are findings."""
    scenario = SCENARIOS[name]
    rig.say(f"== {name}: {scenario.fault}")
    healed = rig.heal()
    if healed:
        rig.say(f"  (restarted before it: {', '.join(healed)})")
    outcome = Outcome(name, scenario.fault)
    waited = time.monotonic()
    left = _leftover(rig)
    if left:
        outcome.timing(f"it began with {left:.0f} work records of earlier ones unanswered")
    elif time.monotonic() - waited >= 1:
        rig.say(f"  (earlier work answered first, in {time.monotonic() - waited:.0f} s)")
    before = rig.pids()
    start = time.monotonic()
    try:
        scenario.run(rig, outcome)
    except Exception as exc:  # a scenario that breaks is reported, and the run goes on
        outcome.broken(f"the scenario failed: {exc!r}")
    if outcome.tally is not None:
        outcome.findings += scenario.error_findings(outcome.tally)
    _unasked(rig, scenario, before, outcome)
    t = outcome.tally
    summary = (
        "no tally"
        if t is None
        else f"{t.accepted} accepted, {t.replies} answered, {t.lost} lost, "
        f"{t.duplicates} duplicates ({t.conflicting} conflicting)"
    )
    rig.say(f"  {name}: {summary} in {time.monotonic() - start:.0f} s")
    for finding in outcome.findings:
        rig.say(f"  FINDING ({finding.kind}): {finding.text}")
    return outcome


def _unasked(rig: Rig, scenario: Scenario, before: dict[str, int | None], outcome: Outcome) -> None:
    """Each process that died or restarted during the scenario, other than those it
    restarts on purpose, breaks a guarantee; the finding quotes the end of its log."""
    for proc_name, pid in rig.pids().items():
        role = "worker" if proc_name.startswith("worker-") else proc_name
        if pid == before[proc_name] or role in scenario.restarts:
            continue
        proc = rig.component(proc_name).proc
        what = "died" if pid is None else f"was restarted (pid {before[proc_name]} -> {pid})"
        said = " | ".join(log_lines(proc, run=-1 if pid is None else -2))
        outcome.broken(f"{proc_name} {what}; its log ends: {said}")
