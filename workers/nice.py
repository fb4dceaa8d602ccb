"""A CPU engine's processes at a lower CPU priority than the worker that feeds them.

On a CPU the engine keeps every core busy with dozens of threads, and the worker's own
loop, which runs vLLM's front end (taking requests in, turning the engine's outputs into
answers), is one thread among them. Reniced, the engine yields a core at once when that
loop wakes. Niceness weighs threads against others of the same scheduling group only:
with autogroup (each session its own group, as `llmq local up` starts its services) or one
container per service, that is the worker's process and its engine, not Kafka or the stream
processor, which the kernel already shares the cores with group by group.
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
            text = stat.read_bytes()
            # "pid (comm) state ppid ...", where comm may hold spaces and parentheses
            parent = int(text[text.rindex(b")") + 1 :].split()[1])
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
        try:
            tids = os.listdir(proc / str(pid) / "task")
        except OSError:  # the process is gone
            continue
        for tid in tids:
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
                count += 1
    return count


def renice_below(pid: int, by: int) -> tuple[list[int], int, int]:
    """The processes below `pid`, every thread `by` steps nicer than this process (at most
    19): (their pids, the niceness, how many threads were set)."""
    nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + by)
    pids = descendants(pid)
    return pids, nice, renice(pids, nice)
