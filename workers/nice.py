"""A CPU engine at a lower CPU priority than the worker that feeds it, and than the
pipeline's other services.

On a CPU the engine keeps every core busy with dozens of threads, and the worker's own
loop, which runs vLLM's front end (taking requests in, turning the engine's outputs into
answers), is one thread among them. Reniced, the engine yields a core at once when that
loop wakes. Niceness weighs threads against others of the same scheduling group only:
with autogroup (each session its own group, as `llmq local up` starts its services) that
is the worker's process and its engine. Across groups the kernel shares the cores group by
group, so while the engine is busy, Kafka and the stream processor got half of them at
best when they woke. A session's group has a niceness of its own: the worker's, raised,
lets them go first, and the engine takes what they leave. With one container per service
the container's CPU weight plays that part (deployment's concern, not this module's).
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


def nice_session(pid: int, nice: int, proc: Path = PROC) -> bool:
    """The scheduling group (autogroup) of the session `pid` leads at niceness `nice`;
    whether it was set. Only a session leader's (a service started in a session of its
    own, as `llmq local up` starts them), never a shell's, and only where the kernel groups
    by session."""
    try:
        if (
            os.getsid(pid) != pid
            or (proc / "sys/kernel/sched_autogroup_enabled").read_text().strip() != "1"
        ):
            return False
        (proc / str(pid) / "autogroup").write_text(str(nice))
    except OSError:  # gone, no autogroup in this kernel, or not ours to change
        return False
    return True
