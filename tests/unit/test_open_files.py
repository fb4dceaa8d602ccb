"""A server raises its open-files limit to the hard one at start, and warns where even that is
below what it needs (at the limit it accepts no connection, health checks included)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = """
import logging, resource, sys
from llmq import startup
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
print(startup.open_files(int(sys.argv[1]), "the test"))
print(*resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def _run(soft: int, hard: int, wanted: int) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(wanted)],
        preexec_fn=limit,  # the child's limits, before Python starts
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def _hard() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    hard = _hard()
    done = _run(256, hard, hard)
    assert done.stdout.split() == [str(hard), str(hard), str(hard)]
    assert "WARNING" not in done.stderr


def test_a_hard_limit_below_the_need_is_said() -> None:
    hard = _hard()
    done = _run(256, hard, hard + 1)
    assert done.stdout.split() == [str(hard), str(hard), str(hard)]
    assert f"open files are limited to {hard}, below the {hard + 1} the test needs" in done.stderr
