"""workers.nice: a process's descendants from /proc, and every thread of them reniced."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from workers.nice import descendants, renice


def _stat(proc: Path, pid: int, comm: str, parent: int) -> None:
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) S {parent} {pid} 0 0 -1\n")


def test_descendants_follow_parents_even_through_odd_process_names(tmp_path: Path) -> None:
    _stat(tmp_path, 10, "python", 1)
    _stat(tmp_path, 11, "VLLM::EngineCore", 10)
    _stat(tmp_path, 12, "a (b) c", 11)  # spaces and parentheses in the name
    _stat(tmp_path, 13, "other", 1)
    (tmp_path / "14").mkdir()  # gone while read: no stat
    (tmp_path / "15").mkdir()
    (tmp_path / "15" / "stat").write_text("garbage")
    assert sorted(descendants(10, tmp_path)) == [11, 12]
    assert descendants(12, tmp_path) == []


def test_every_thread_of_a_real_child_is_reniced() -> None:
    script = (
        "import threading, time; "
        "threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        tasks = Path(f"/proc/{child.pid}/task")
        deadline = time.monotonic() + 10
        while len(list(tasks.iterdir())) < 2:
            assert time.monotonic() < deadline, "the child did not start its thread"
            time.sleep(0.01)
        assert child.pid in descendants(os.getpid())
        assert renice([child.pid], 7) == 2
        assert {os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in tasks.iterdir()} == {7}
        assert renice([999_999_999], 7) == 0  # no such process
    finally:
        child.kill()
        child.wait()
