"""The fault scenarios' own checks, run against a fake stack and load: a stream processor
that leaves by itself while Kafka is down, a SIGTERM that finds nothing to stop, a fault
that lands on an idle engine, a worker that stopped with an error instead of draining; and
the runner's checks after each (error replies, processes that died)."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tools.batch.client import BatchApi
from tools.faults import batches, runner, scenarios
from tools.faults.outcome import Finding, Kind, Outcome
from tools.faults.rig import Rig
from tools.faults.scenarios import Scenario, kafka_stop, scale_down, worker_kill
from tools.faults.tally import Tally
from tools.stack.procs import Proc
from tools.stack.stack import Component, LocalStack

PIDS = itertools.count(1000)
CLEAN = Tally(sent=30, accepted=30, replies=30, lost=0, duplicates=0, conflicting=0)


class FakeProc:
    """A process of the stack, as the scenarios handle it: a pid until it exits or is
    stopped, a log of its runs."""

    def __init__(self, run_dir: Path, name: str, **behaviour: Any) -> None:
        self.name = name
        self.log_file = run_dir / f"{name}.log"
        self.stop_timeout_s = 30.0
        self.on_stop = behaviour.get("on_stop", lambda: None)
        """What stopping it does to the rest (Kafka away: streams exits by itself)."""
        self.gone_at_stop = behaviour.get("gone_at_stop", False)
        """It exits just before its SIGTERM comes."""
        self._pid: int | None = None
        self.start()

    def pid(self) -> int | None:
        return self._pid

    def start(self, said: str = "") -> None:
        self._pid = next(PIDS)
        with self.log_file.open("a") as log:
            log.write(f"\n=== 2026-12-03 08:00:00 starting {self.name}\n{said}")

    def exit(self) -> None:
        self._pid = None

    def stop(self) -> bool:
        running = self._pid is not None and not self.gone_at_stop
        self._pid = None
        self.on_stop()
        return running


class FakeStack:
    """What Rig reads of a LocalStack: its components, `up`, a replica and its start."""

    def __init__(self, run_dir: Path, **behaviour: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.settings = SimpleNamespace(kafka_bootstrap="fake:9092")
        self.catalog = SimpleNamespace(default="m", get=lambda name: SimpleNamespace(name=name))
        names = ("kafka", "streams", "worker-m")
        self.procs = {n: FakeProc(run_dir, n, **behaviour.get(n, {})) for n in names}
        self.extra_log = ""

    def components(self) -> list[Component]:
        return [_component(p) for p in self.procs.values()]

    def up(self, say: Any) -> None:
        for proc in self.procs.values():
            if proc.pid() is None:
                proc.start()
                say(f"starting {proc.name}")

    def replica(self, spec: Any, replica: int) -> Component:
        return _component(FakeProc(self.run_dir, f"worker-{spec.name}-{replica}"))

    def start(self, comp: Component, say: Any) -> None:
        cast(FakeProc, comp.proc).start(self.extra_log)


class FakeRig(Rig):
    """A Rig whose workers never have anything in flight."""

    def in_flight(self, worker: Component) -> float:
        return 0.0


class FakeLoad:
    """A load that sends nothing and finds every request answered once."""

    def __init__(self, bootstrap: str, scenario: str) -> None:
        self.sent = 0

    def __enter__(self) -> FakeLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def steady(self, rate: float, make: object = None) -> None:
        return None

    def wait_for(self, done: object, timeout_s: float) -> bool:
        return True

    def answered(self) -> int:
        return 3

    def request(self, *args: object, **envelope: object) -> object:
        return object()

    def send(self, request: object) -> str:
        self.sent += 1
        return f"r{self.sent}"

    def finish(self, fault_at: float | None, drain_s: float) -> Tally:
        return CLEAN


def _component(proc: FakeProc) -> Component:
    return Component(cast(Proc, proc), ready=lambda: True, endpoint="fake", ports=())


@pytest.fixture(autouse=True)
def _no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """No sleeps, no Kafka, no /metrics, no kill -9: the fakes stand in."""
    for name in ("KAFKA_DOWN_S", "AFTER_S", "BUSY_WAIT_S"):
        monkeypatch.setattr(scenarios, name, 0.0)
    monkeypatch.setattr(scenarios, "Load", FakeLoad)
    monkeypatch.setattr(scenarios, "metric", lambda *args, **labels: None)
    monkeypatch.setattr(scenarios, "kill9", lambda comp: cast(FakeProc, comp.proc).exit())


def _rig(stack: FakeStack) -> Rig:
    return FakeRig(cast(LocalStack, stack), scale=1.0, say=lambda _: None)


def _broken(out: Outcome) -> list[str]:
    return [f.text for f in out.findings if f.kind is Kind.BROKEN]


def test_streams_leaving_by_itself_while_kafka_is_down_fails_the_row(tmp_path: Path) -> None:
    stack = FakeStack(tmp_path)
    streams = stack.procs["streams"]
    stack.procs["kafka"].on_stop = streams.exit
    out = Outcome("kafka-stop", "Kafka stopped")
    kafka_stop(_rig(stack), out)
    assert _broken(out) == [
        "streams exited while Kafka was down; its log ends: ",
        "streams was not running when its SIGTERM came while Kafka was away",
    ]
    assert out.failed


def test_a_sigterm_that_finds_streams_gone_is_no_drain(tmp_path: Path) -> None:
    stack = FakeStack(tmp_path, streams={"gone_at_stop": True})
    out = Outcome("kafka-stop", "Kafka stopped")
    kafka_stop(_rig(stack), out)
    assert _broken(out) == ["streams was not running when its SIGTERM came while Kafka was away"]
    assert not any("streams left" in note for note in out.notes)


def test_streams_that_leaves_on_its_sigterm_is_no_finding(tmp_path: Path) -> None:
    out = Outcome("kafka-stop", "Kafka stopped")
    kafka_stop(_rig(FakeStack(tmp_path)), out)
    assert out.findings == []
    assert not out.failed


def test_a_kill_that_finds_the_engine_idle_is_a_timing_finding_not_a_failure(
    tmp_path: Path,
) -> None:
    out = Outcome("worker-kill", "kill -9 of the worker")
    worker_kill(_rig(FakeStack(tmp_path)), out)
    assert out.findings == [
        Finding(
            Kind.TIMING,
            "half the burst of 12 in the engine at the kill was not reached before the "
            "fault: not tested as claimed",
        )
    ]
    assert not out.failed


def test_a_stack_that_never_warmed_up_is_recorded_before_the_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load's first answers never came: Kafka stopped on a stack that served nothing."""

    class Cold(FakeLoad):
        def wait_for(self, done: object, timeout_s: float) -> bool:
            return False

    monkeypatch.setattr(scenarios, "Load", Cold)
    out = Outcome("kafka-stop", "Kafka stopped")
    kafka_stop(_rig(FakeStack(tmp_path)), out)
    assert out.findings == [
        Finding(Kind.TIMING, "a warm stack was not reached before the fault: not tested as claimed")
    ]
    assert not out.failed


@pytest.mark.parametrize(
    ("said", "broken"),
    [
        ("2026-12-03 08:01:00,000 INFO workers: worker local-m-2 stopped\n", []),
        (
            "2026-12-03 08:01:00,000 ERROR workers: the worker stopped: the engine died\n",
            ["worker-m-2 did not drain and exit by itself within 30 s"],
        ),
    ],
)
def test_the_scaled_down_worker_must_log_its_drain_not_an_error_exit(
    tmp_path: Path, said: str, broken: list[str]
) -> None:
    stack = FakeStack(tmp_path)
    stack.extra_log = said
    out = Outcome("scale-down", "SIGTERM of one of two workers")
    scale_down(_rig(stack), out)
    assert _broken(out) == broken
    assert out.failed is bool(broken)


def test_stop_says_none_when_the_process_was_not_running(tmp_path: Path) -> None:
    rig = _rig(FakeStack(tmp_path))
    idle = Component(Proc("idle", ["sleep", "30"], tmp_path), lambda: True, "", ())
    assert rig.stop(idle) is None


def test_stop_says_how_long_a_running_process_took_to_leave(tmp_path: Path) -> None:
    rig = _rig(FakeStack(tmp_path))
    proc = Proc("sleeper", ["sleep", "30"], tmp_path, env={"LLMQ_FAULTS_TEST": "1"})
    proc.start()
    assert isinstance(rig.stop(Component(proc, lambda: True, "", ())), float)


@pytest.mark.parametrize(
    ("errors", "dies", "broken"),
    [
        ({}, False, []),
        ({"internal_error": 30}, False, ["error replies it does not expect: internal_error 30"]),
        ({}, True, ["streams died; its log ends: "]),
    ],
)
def test_the_runner_fails_a_row_with_error_replies_or_a_process_that_died(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    errors: dict[str, int],
    dies: bool,
    broken: list[str],
) -> None:
    stack = FakeStack(tmp_path)

    def run(rig: Rig, out: Outcome) -> None:
        out.tally = Tally(
            sent=30, accepted=30, replies=30, lost=0, duplicates=0, conflicting=0, errors=errors
        )
        if dies:
            stack.procs["streams"].exit()

    monkeypatch.setattr(runner, "SCENARIOS", {"fake": Scenario("a fake fault", run)})
    monkeypatch.setattr(runner, "_leftover", lambda rig: 0.0)
    out = runner._one(_rig(stack), "fake")
    assert _broken(out) == broken
    assert out.failed is bool(broken)


@pytest.mark.parametrize(("answered", "timing"), [(20, []), (3, ["10 lines answered"])])
def test_a_batch_kill_before_its_lines_were_answered_is_a_timing_finding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answered: int, timing: list[str]
) -> None:
    stack = FakeStack(tmp_path)
    api = SimpleNamespace(batch=lambda _: {"request_counts": {"completed": answered, "failed": 0}})
    monkeypatch.setattr(batches, "BUSY_WAIT_S", 0.0)
    monkeypatch.setattr(batches, "kill9", lambda comp: cast(FakeProc, comp.proc).exit())
    out = Outcome("batch-restarts", "kill -9 mid-batch", CLEAN)
    streams = _component(stack.procs["streams"])
    batches._kill(_rig(stack), out, cast(BatchApi, api), "b1", streams, after=10)
    assert [f.text.split(" before")[0] for f in out.findings if f.kind is Kind.TIMING] == timing
    assert not out.failed
