"""The cores this process may use: its CPU affinity, lowered by a CPU quota of its cgroup."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def usable_cores(root: Path = Path("/")) -> float:
    """The CPUs this process may run on (taskset, a cpuset), or fewer where its cgroup or one
    above it has a CPU quota (`docker run --cpus=2`, a Kubernetes CPU limit)."""
    cores = float(len(os.sched_getaffinity(0)))
    return min([cores, *_quotas(root)])


def _quotas(root: Path) -> Iterator[float]:
    """The CPU quotas, in cores, of this process's cgroups and their parents: cgroup v2's
    cpu.max, v1's cfs quota over its period; none where unlimited or unreadable."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and not controllers:
            read, mount = _v2, root / "sys/fs/cgroup"
        elif "cpu" in controllers.split(","):
            read, mount = _v1, root / "sys/fs/cgroup" / controllers
        else:
            continue
        place = mount / path.lstrip("/")
        for folder in (place, *place.parents):  # a container sees its own cgroup as the root
            if folder.is_relative_to(mount) and (quota := read(folder)) is not None:
                yield quota


def _v2(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
