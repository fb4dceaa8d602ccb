"""The local stack's reading of the cores it may use, on fake /proc and /sys trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.stack.cores import usable_cores


def _tree(root: Path, cgroup: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        (root / "sys/fs/cgroup" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "sys/fs/cgroup" / name).write_text(text)
    return root


@pytest.fixture(autouse=True)
def _eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(8)))


@pytest.mark.parametrize(
    ("cgroup", "files", "cores"),
    [
        # cgroup v2 in a container (`docker run --cpus=2`): its own cgroup is the root
        ("0::/\n", {"cpu.max": "200000 100000\n"}, 2.0),
        ("0::/\n", {"cpu.max": "max 100000\n"}, 8.0),
        # a unit's slice limits the services below it
        ("0::/llmq.slice/stack.service\n", {"llmq.slice/cpu.max": "150000 100000\n"}, 1.5),
        (
            "0::/a/b\n",
            {"a/cpu.max": "300000 100000\n", "a/b/cpu.max": "500000 100000\n"},
            3.0,
        ),
        # cgroup v1, the cpu controller mounted with cpuacct
        (
            "4:memory:/x\n2:cpu,cpuacct:/docker/c1\n0::/\n",
            {
                "cpu,cpuacct/docker/c1/cpu.cfs_quota_us": "250000\n",
                "cpu,cpuacct/docker/c1/cpu.cfs_period_us": "100000\n",
            },
            2.5,
        ),
        (
            "1:cpu:/\n",
            {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
            8.0,
        ),
        # the affinity is lower than the quota
        ("0::/\n", {"cpu.max": "1600000 100000\n"}, 8.0),
        # unreadable or odd files are no quota
        ("0::/\n", {"cpu.max": "garbage\n"}, 8.0),
        ("0::/\n", {}, 8.0),
    ],
)
def test_a_cgroup_quota_lowers_the_cores(
    tmp_path: Path, cgroup: str, files: dict[str, str], cores: float
) -> None:
    assert usable_cores(_tree(tmp_path, cgroup, files)) == cores


def test_without_cgroups_the_affinity_counts(tmp_path: Path) -> None:
    assert usable_cores(tmp_path) == 8.0  # no /proc/self/cgroup
    assert usable_cores() <= len(os.sched_getaffinity(0))  # this machine's, whatever it is


def test_a_quota_outside_the_mount_is_not_read(tmp_path: Path) -> None:
    """The parents of a cgroup stop at its hierarchy's mount."""
    _tree(tmp_path, "0::/a\n", {"a/cpu.max": "max 100000\n"})
    (tmp_path / "sys/fs/cpu.max").write_text("100000 100000\n")
    assert usable_cores(tmp_path) == 8.0
