"""The `llmq` command under signals: a hang-up ends it as SIGTERM does, through every
`finally` (it killed the command outright, and a stack it had started, in sessions of its own,
ran on), unless nohup ignores it, and its stack goes down though the terminal is gone (the
teardown's first line, written there, failed before it); a second Ctrl-C while bench or
faults take their stack down waits for the teardown's end (it cut it short, leaving the stack
running); Ctrl-C while a Kafka client starts closes its network client (left running, it
logged `Bootstrap failed` as the command exited). Nothing listens on 127.0.0.1:1."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest

from llmq.cli import main, uninterrupted
from llmq.client import connect
from schemas.kafka_security import KafkaSecurity
from tools.bench.ways.queue import LlmqWay
from tools.faults import runner
from tools.faults.plan import SCENARIOS
from tools.faults.rig import Rig

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
HOLDING = "llmq: stopping the stack first (Ctrl-\\ quits at once, leaving it running)"


@pytest.fixture(autouse=True)
def _interruptible() -> Iterator[None]:
    """Ctrl-C as a terminal delivers it: a suite started in the background (CI's) inherits
    SIGINT ignored, which uninterrupted() rightly leaves ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _as_from_a_terminal() -> None:
    """A child's signals as a terminal's shell leaves them (a suite run under nohup or in the
    background would pass its ignored SIGHUP and SIGINT on)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def _waiting_for_kafka(*before: str) -> Iterator[subprocess.Popen[str]]:
    """`llmq topics --create` waiting for a Kafka that is not there, once it says so."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_")}
    env["LLMQ_KAFKA_BOOTSTRAP"] = "127.0.0.1:1"
    with subprocess.Popen(
        [*before, sys.executable, "-m", "llmq.cli", "topics", "--create", "--timeout", "40"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        text=True,
        preexec_fn=_as_from_a_terminal,  # noqa: PLW1509 -- before exec; nohup ignores SIGHUP after
    ) as command:
        try:
            assert command.stderr is not None
            said = command.stderr.readline()
            assert said.startswith("llmq topics: waiting up to 40 s for Kafka"), said
            yield command
        finally:
            if command.poll() is None:
                command.kill()


def test_a_hang_up_ends_the_command_as_sigterm_does() -> None:
    with _waiting_for_kafka() as command:
        command.send_signal(signal.SIGHUP)
        assert command.wait(timeout=30) == 128 + signal.SIGHUP


def test_a_hang_up_nohup_ignores_stays_ignored() -> None:
    with _waiting_for_kafka("nohup") as command:
        command.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            command.wait(timeout=1)
        command.terminate()
        assert command.wait(timeout=30) == 128 + signal.SIGTERM


class Stack:
    """A local stack whose teardown gets a second Ctrl-C halfway (unless `ctrl_c` is off)."""

    def __init__(self, *, ctrl_c: bool = True) -> None:
        self.ctrl_c = ctrl_c
        self.down_to_the_end = False

    def down(self, say: object = None) -> None:
        if self.ctrl_c:
            os.kill(os.getpid(), signal.SIGINT)
        self.down_to_the_end = True


def test_a_faults_run_takes_its_stack_down_through_a_second_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    stacks: list[Stack] = []

    def made(settings: object) -> Stack:
        stacks.append(Stack())
        return stacks[-1]

    def first_ctrl_c(rig: Rig) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "LocalStack", made)
    monkeypatch.setattr(Rig, "heal", lambda self: [])
    monkeypatch.setattr(runner, "_warm", first_ctrl_c)
    name = next(name for name, scenario in SCENARIOS.items() if scenario.brokers == 1)
    with pytest.raises(KeyboardInterrupt):
        runner.run_faults(
            [name],
            scale=1.0,
            cache_dir=tmp_path,
            report_path=tmp_path / "RELIABILITY.md",
            out_dir=tmp_path / "out",
            readme=None,
            command="llmq faults",
            say=lambda _: None,
        )
    assert [stack.down_to_the_end for stack in stacks] == [True]
    assert HOLDING in capfd.readouterr().err


def test_a_faults_run_takes_its_stack_down_when_its_terminal_hangs_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its teardown said "stopping the stack" first, to the terminal that had hung up: that
    failed (EIO), the stack stayed up, and the command ended in a traceback (status 1). The
    terminal is a pty whose other side closes; stdout is buffered, as off a terminal, so
    main's last flush meets the hang-up too."""
    terminal, side = os.openpty()
    stacks: list[Stack] = []

    def made(settings: object) -> Stack:
        stacks.append(Stack(ctrl_c=False))
        return stacks[-1]

    def hung_up(rig: Rig) -> None:
        os.close(terminal)  # writing to `side` fails from here on
        raise SystemExit(128 + signal.SIGHUP)  # as SIGHUP's handler does (exit_on_sigterm)

    monkeypatch.setattr(runner, "LocalStack", made)
    monkeypatch.setattr(Rig, "heal", lambda self: [])
    monkeypatch.setattr(runner, "_warm", hung_up)
    name = next(name for name, scenario in SCENARIOS.items() if scenario.brokers == 1)
    report = tmp_path / "RELIABILITY.md"
    argv = ["faults", "--only", name, "--out", str(tmp_path), "--report", str(report)]
    with open(side, "w", buffering=io.DEFAULT_BUFFER_SIZE) as stdout, monkeypatch.context() as m:
        m.setattr(sys, "stdout", stdout)
        with pytest.raises(SystemExit) as ended:
            main([*argv, "--no-readme"])
    assert ended.value.code == 128 + signal.SIGHUP
    assert [stack.down_to_the_end for stack in stacks] == [True]


def test_a_bench_way_takes_its_stack_down_through_a_ctrl_c_and_then_stops(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    way = LlmqWay(tmp_path)
    stack = Stack()
    way._stack = stack  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        way.__exit__(None, None, None)
    assert stack.down_to_the_end and way._stack is None
    assert "llmq: stopping the local stack first" in capfd.readouterr().err


def test_a_signal_held_leaves_a_failure_already_on_its_way_as_it_is() -> None:
    with pytest.raises(RuntimeError, match="the scenario failed"), uninterrupted("tearing down"):
        os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("the scenario failed")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_is_held_where_it_cannot_be_said() -> None:
    """A hang-up takes the terminal: writing there fails, and must not cut the block short."""
    read, write = os.pipe()
    os.close(read)
    stderr = os.dup(2)
    os.dup2(write, 2)
    ran_to_the_end = False
    try:
        with pytest.raises(KeyboardInterrupt), uninterrupted("tearing down"):
            os.kill(os.getpid(), signal.SIGINT)
            ran_to_the_end = True
    finally:
        os.dup2(stderr, 2)
        os.close(stderr)
        os.close(write)
    assert ran_to_the_end


def test_a_signal_ignored_stays_ignored_through_a_teardown(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """nohup's hang-up: not held, not said, and nothing after the block."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with uninterrupted("tearing down"):
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert capfd.readouterr().err == ""


class Network:
    """A network client as kafka-python builds one, which says whether it was closed."""

    def __init__(self, **config: Any) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Interrupted:
    """A Kafka client whose start a Ctrl-C cuts short once its network client runs, as it
    does while kafka-python bootstraps."""

    DEFAULT_CONFIG: ClassVar[dict[str, Any]] = {"kafka_client": Network}
    networks: ClassVar[list[Network]] = []

    def __init__(self, *, kafka_client: Any, **config: Any) -> None:
        self.networks.append(kafka_client())
        raise KeyboardInterrupt


def test_a_kafka_client_interrupted_while_it_starts_is_closed() -> None:
    with pytest.raises(KeyboardInterrupt):
        connect(Interrupted, "127.0.0.1:1", KafkaSecurity())
    assert [network.closed for network in Interrupted.networks] == [True]
