"""llmq.deadline: a stop that cannot finish ends the process and its children, saying why."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]

STUCK = """
import subprocess, sys, time
from llmq.deadline import exit_after
sleeper = [sys.executable, "-c", "import time; time.sleep(50)"]
child = subprocess.Popen(sleeper, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
exit_after(1, "the broker is away")
time.sleep(50)
"""


def test_a_stop_past_its_deadline_exits_with_its_reason_and_takes_its_children() -> None:
    done = subprocess.run(
        [sys.executable, "-c", STUCK],
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 1, done.stderr
    assert "not stopped within 1 s of the stop's start: the broker is away" in done.stderr
    child = int(done.stdout.split()[0])
    gone_by = time.monotonic() + 20  # SIGKILL is sent, not yet acted on, as its parent exits
    while _alive(child):
        assert time.monotonic() < gone_by, f"the child {child} outlived its parent's deadline"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running, not a zombie (a killed orphan stays one where nothing reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")
