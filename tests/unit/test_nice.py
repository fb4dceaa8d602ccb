"""workers.nice: a process's descendants from /proc, and every thread of them reniced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers.nice import descendants, nice_session, renice, renice_below


def _stat(proc: Path, pid: int, comm: str, parent: int) -> None:
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "stat").write_bytes(
        f"{pid} ({comm}) S {parent} {pid} 0 0 -1\n".encode("utf-8", "surrogateescape")
    )


def test_descendants_follow_parents_even_through_odd_process_names(tmp_path: Path) -> None:
    _stat(tmp_path, 10, "python", 1)
    _stat(tmp_path, 11, "VLLM::EngineCore", 10)
    _stat(tmp_path, 12, "a (b) c\udcff", 11)  # spaces, parentheses, not UTF-8
    _stat(tmp_path, 13, "other", 1)
    (tmp_path / "14").mkdir()  # gone while read: no stat
    (tmp_path / "15").mkdir()
    (tmp_path / "15" / "stat").write_text("garbage")
    assert sorted(descendants(10, tmp_path)) == [11, 12]
    assert descendants(12, tmp_path) == []


def test_every_thread_below_a_real_process_is_reniced_relative_to_ours() -> None:
    """A child (the engine's front end, say) starts a grandchild with two threads: the
    grandchild's threads are reniced, the child is not."""
    grandchild = (
        "import threading, time; "
        "threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    )
    script = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 10
        while not (below := descendants(child.pid)) or len(_tasks(below[0])) < 2:
            assert time.monotonic() < deadline, "the grandchild did not start its thread"
            time.sleep(0.01)
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        pids, nice, threads = renice_below(child.pid, 3)
        assert (pids, nice, threads) == (below, min(19, ours + 3), 2)
        assert {os.getpriority(os.PRIO_PROCESS, t) for t in _tasks(below[0])} == {nice}
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == ours
        assert renice([999_999_999], nice) == 0  # no such process
    finally:
        for pid in descendants(child.pid):
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()


def test_only_a_session_leaders_group_is_changed() -> None:
    """A process in someone else's session (a shell's) is left alone, whatever the kernel."""
    member = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert nice_session(member.pid, 7) == "it does not lead its session"
        assert nice_session(999_999_999, 7) is not None  # no such process
    finally:
        member.kill()
        member.wait()


@pytest.mark.parametrize(
    ("autogroup", "cgroup", "why_not"),
    [
        ("1", "1:cpu,cpuacct:/\n0::/\n", None),  # cgroup v1, the root CPU cgroup
        ("1", "0::/\n", None),  # cgroup v2, the root
        ("0", "0::/\n", "the kernel does not group by session"),
        ("1", "1:cpu,cpuacct:/docker/0123\n", "it is in a CPU cgroup of its own"),
        ("1", "0::/system.slice/llmq.service\n", "it is in a CPU cgroup of its own"),
    ],
)
def test_a_leaders_group_is_changed_where_the_kernel_groups_it_by_session(
    tmp_path: Path, autogroup: str, cgroup: str, why_not: str | None
) -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
    )
    try:
        (tmp_path / "sys/kernel").mkdir(parents=True)
        (tmp_path / "sys/kernel/sched_autogroup_enabled").write_text(autogroup + "\n")
        (tmp_path / str(leader.pid)).mkdir()
        (tmp_path / str(leader.pid) / "cgroup").write_text(cgroup)
        group = tmp_path / str(leader.pid) / "autogroup"
        result = nice_session(leader.pid, 7, tmp_path)
        if why_not is None:
            assert result is None
            assert group.read_text() == "7"
        else:
            assert result is not None and result.startswith(why_not)
            assert not group.exists()
    finally:
        leader.kill()
        leader.wait()


def _tasks(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
