"""streams.stopping: a stop that cannot finish ends the process, saying why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


def test_a_stop_past_its_deadline_exits_with_its_reason() -> None:
    stuck = "from streams.stopping import exit_after; import time; exit_after(1); time.sleep(50)"
    done = subprocess.run(
        [sys.executable, "-c", stuck],
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 1, done.stderr
    assert "not stopped 1 s after the signal to stop" in done.stderr
    assert "the next instance reads them again" in done.stderr
