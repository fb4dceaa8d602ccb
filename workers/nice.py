"""A CPU engine's processes at a lower CPU priority than the pipeline sharing its cores.

On a CPU machine the engine keeps every core busy, and Kafka, Redis, the stream processor
and the worker's own loop wait for a core each time they wake: that wait is most of the
added latency's tail at half load. Reniced, the engine yields a core at once to whichever of
them wakes; they use about a tenth of the cores, so the engine keeps the rest.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PROC = Path("/proc")


def descendants(pid: int, proc: Path = PROC) -> list[int]:
    """The processes below `pid` (children, theirs, ...), from each process's parent."""
    children: dict[int, list[int]] = {}
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # gone meanwhile
            text = stat.read_text()
            # "pid (comm) state ppid ...", where comm may hold spaces and parentheses
            parent = int(text[text.rindex(")") + 1 :].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def renice(pids: list[int], nice: int, proc: Path = PROC) -> int:
    """Every thread of these processes at niceness `nice` (threads they start later inherit
    it); how many were set. A process or thread that is gone, or not ours to renice, is
    skipped."""
    count = 0
    for pid in pids:
        for task in (proc / str(pid) / "task").glob("*"):
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
                count += 1
    return count
