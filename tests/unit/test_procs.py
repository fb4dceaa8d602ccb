"""Proc: detached processes tracked by pid files, with short-lived real subprocesses."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tools.stack.procs import Proc, running
from tools.stack.settings import LocalSettings
from tools.stack.stack import Component, LocalStack, StackError

SLEEP = [sys.executable, "-c", "import time; time.sleep(30)"]
IGNORE_TERM = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(30)",
]


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat: the kernel's start time of the process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[19]


def _wait_until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Makes Procs in a temporary run dir and stops whatever they left running."""
    made: list[Proc] = []

    def make(argv: list[str], name: str = "sleeper", stop_timeout_s: float = 5.0) -> Proc:
        proc = Proc(name=name, argv=argv, run_dir=tmp_path / "run", stop_timeout_s=stop_timeout_s)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        pid = proc.pid()
        if pid is not None:
            proc.stop()


def test_start_records_the_pid_and_stop_ends_it(procs: Callable[..., Proc]) -> None:
    proc = procs(SLEEP)
    pid = proc.start()
    assert proc.pid() == pid
    assert proc.pid_file.read_text() == f"{pid} {_start_time(pid)}"
    assert proc.stop() is True
    assert proc.pid() is None
    assert not proc.pid_file.exists()
    assert not Path(f"/proc/{pid}").exists()


def test_stop_of_a_stopped_proc_returns_false(procs: Callable[..., Proc]) -> None:
    proc = procs(SLEEP)
    assert proc.stop() is False
    proc.start()
    assert proc.stop() is True
    assert proc.stop() is False


def test_stop_kills_a_process_that_ignores_sigterm(procs: Callable[..., Proc]) -> None:
    proc = procs(IGNORE_TERM, name="stubborn", stop_timeout_s=0.3)
    pid = proc.start()
    _wait_until(lambda: "ready" in proc.tail())
    started = time.monotonic()
    assert proc.stop() is True
    assert time.monotonic() - started >= 0.3
    assert proc.pid() is None
    assert not Path(f"/proc/{pid}").exists()


def test_a_process_that_exited_has_no_pid(procs: Callable[..., Proc]) -> None:
    proc = procs([sys.executable, "-c", "pass"], name="brief")
    proc.start()
    _wait_until(lambda: proc.pid() is None)
    assert proc.stop() is False
    assert not proc.pid_file.exists()


def test_a_pid_file_with_a_wrong_start_time_is_not_ours(tmp_path: Path) -> None:
    proc = Proc(name="stale", argv=SLEEP, run_dir=tmp_path)
    me = os.getpid()
    proc.pid_file.write_text(f"{me} {_start_time(me)}")
    assert proc.pid() == me  # a live process with the recorded start time
    proc.pid_file.write_text(f"{me} 1")
    assert proc.pid() is None  # a reused pid: same number, another process
    assert proc.stop() is False
    assert not proc.pid_file.exists()


@pytest.mark.parametrize("content", ["", "garbage", "123", "x 1", "1 2 3"])
def test_an_unreadable_pid_file_means_not_running(tmp_path: Path, content: str) -> None:
    proc = Proc(name="odd", argv=SLEEP, run_dir=tmp_path)
    proc.pid_file.write_text(content)
    assert proc.pid() is None


def test_no_pid_file_means_not_running(tmp_path: Path) -> None:
    assert Proc(name="never", argv=SLEEP, run_dir=tmp_path).pid() is None


def test_tail_returns_the_end_of_the_log(procs: Callable[..., Proc]) -> None:
    count = [sys.executable, "-c", "for i in range(1, 51): print(i)"]
    proc = procs(count, name="counter")
    proc.start()
    _wait_until(lambda: proc.pid() is None)
    assert proc.tail(3) == "48\n49\n50"
    assert "starting counter" in proc.tail(51)
    assert "starting counter" not in proc.tail(50)


def test_tail_without_a_log(tmp_path: Path) -> None:
    assert Proc(name="never", argv=SLEEP, run_dir=tmp_path).tail() == "(no log)"


def test_the_log_is_appended_across_starts_and_env_is_passed(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import os; print(os.environ['LLMQ_UNIT_MARK'])"]
    proc = Proc(name="env", argv=argv, run_dir=tmp_path, env={"LLMQ_UNIT_MARK": "marked"})
    for _ in range(2):
        proc.start()
        _wait_until(lambda: proc.pid() is None)
    log = proc.log_file.read_text()
    assert log.count("starting env") == 2
    assert log.count("marked") == 2


def test_running_lists_a_process_its_command_and_busy_time_and_not_once_it_is_gone(
    procs: Callable[..., Proc],
) -> None:
    spin = procs([sys.executable, "-c", "while True: pass"], name="spin")
    pid = spin.start()
    _wait_until(lambda: running()[pid][1].endswith("-c while True: pass"))  # exec'd
    name, _, first = running()[pid]
    assert name.startswith("python")
    _wait_until(lambda: running()[pid][2] >= first + 0.2)
    assert spin.stop()
    assert spin.pid() is None  # reaped
    assert pid not in running()


def test_down_stops_workers_the_stack_was_started_with_under_another_catalog(
    tmp_path: Path,
) -> None:
    """`llmq local up` with LLMQ_MODELS_FILE=my.toml, `llmq local down` from a fresh shell:
    the workers of my.toml kept running (GBs, ports held)."""
    stack = LocalStack(LocalSettings(state_dir=tmp_path))
    other = Proc("worker-mymodel", SLEEP, tmp_path / "run")
    other.start()
    assert [(row.name, row.ready) for row in stack.status() if row.pid] == [
        ("worker-mymodel", False)
    ]
    said: list[str] = []
    stack.down(say=said.append)
    assert other.pid() is None
    assert said == ["stopped worker-mymodel"]


FORKS = [
    sys.executable,
    "-c",
    "import os, sys, time\n"
    "sleep = [sys.executable, '-c', 'import time; time.sleep(30)']\n"
    "kept = os.fork()\n"
    "if kept == 0:\n"
    "    time.sleep(30)\n"  # an engine core: the leader's own environment
    "    os._exit(0)\n"
    "other = os.fork()\n"
    "if other == 0:\n"
    "    os.execve(sys.executable, sleep, {})\n"  # the group's, but not llmq's
    "print('children', kept, other, flush=True)\n"
    "time.sleep(30)\n",
]


def _gone(pid: int) -> bool:
    """Ended: no such process, or one not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_killed_leaders_children_of_its_environment_are_stopped(tmp_path: Path) -> None:
    """A worker killed with SIGKILL left its vLLM engine core running, holding its port:
    `down` saw nothing to stop and the next `up` found the port taken for good."""
    proc = Proc("leader", FORKS, tmp_path / "run", env={"LLMQ_STATE_DIR": str(tmp_path)})
    leader = proc.start()
    _wait_until(lambda: "children" in proc.tail())
    kept, other = (int(p) for p in proc.tail().split("children ")[1].split()[:2])
    try:
        os.kill(leader, 9)
        _wait_until(lambda: proc.pid() is None)
        assert proc.stop() is False, "its leader was not running"
        _wait_until(lambda: _gone(kept))
        assert not _gone(other), "a member without llmq's settings is spared"
    finally:
        for pid in (kept, other):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_a_component_that_exits_while_starting_names_its_log(tmp_path: Path) -> None:
    proc = Proc("brief", [sys.executable, "-c", "print('no model here')"], tmp_path / "run")
    proc.start()
    _wait_until(lambda: proc.pid() is None)
    stack = LocalStack(LocalSettings(state_dir=tmp_path / "state"))
    with pytest.raises(StackError) as failed:
        stack._wait(proc, lambda: False, 5.0, lambda _: None)
    assert str(proc.log_file) in str(failed.value) and "no model here" in str(failed.value)


def test_a_proc_started_with_other_settings_or_an_edited_file_names_what_changed(
    tmp_path: Path,
) -> None:
    """`llmq local up` after editing the catalog (or with other settings) found the stack
    running and left it as it was, silently: what it would start differently is named."""
    catalog = tmp_path / "models.toml"
    catalog.write_text("[[models]]\n")
    env = {"LLMQ_PARTITIONS": "4", "LLMQ_MODELS_FILE": str(catalog)}
    proc = Proc("streams", SLEEP, tmp_path / "run", env=env)
    proc.start()
    try:
        assert proc.drift() == []
        again = Proc("streams", SLEEP, tmp_path / "run", env={**env, "LLMQ_PARTITIONS": "8"})
        assert again.drift() == ["LLMQ_PARTITIONS 4 -> 8"]
        catalog.write_text("[[models]]\nname = 'other'\n")
        assert proc.drift() == ["the file LLMQ_MODELS_FILE names"]
        stack = LocalStack(LocalSettings(state_dir=tmp_path / "state"))
        said: list[str] = []
        stack.start_all([Component(again, lambda: True, "here", ())], said.append)
        assert len(said) == 1 and said[0].startswith("warning: streams runs with other settings")
        assert "LLMQ_PARTITIONS 4 -> 8; the file LLMQ_MODELS_FILE names" in said[0]
    finally:
        proc.stop()
    assert not proc.launch_file.exists() and again.drift() == []


def test_the_local_autoscalers_windows_give_way_to_those_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's table gives them as the local defaults: one set before `llmq local up` was
    written over with the stack's own."""
    monkeypatch.setenv("LLMQ_DRAIN_BATCH_S", "600")
    env = LocalStack(LocalSettings(state_dir=tmp_path)).autoscaler().proc.env or {}
    assert env["LLMQ_DRAIN_BATCH_S"] == "600"
    assert env["LLMQ_STABILIZATION_S"] == "60"


@pytest.mark.parametrize(("name", "named"), [("worker-m", True), ("streams", False)])
def test_a_worker_not_ready_in_time_names_the_setting_that_waits_longer(
    tmp_path: Path, name: str, named: bool
) -> None:
    proc = Proc(name, SLEEP, tmp_path / "run")
    proc.start()
    try:
        stack = LocalStack(LocalSettings(state_dir=tmp_path / "state"))
        with pytest.raises(StackError) as failed:
            stack._wait(proc, lambda: False, 0.0, lambda _: None)
    finally:
        proc.stop()
    assert ("LLMQ_WORKER_START_TIMEOUT_S" in str(failed.value)) is named
