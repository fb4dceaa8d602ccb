"""A CPU engine at a lower CPU priority than the worker that feeds it, and than the
pipeline's other services.

On a CPU the engine keeps every core busy with dozens of threads, and the worker's own
loop, which runs vLLM's front end (taking requests in, turning the engine's outputs into
answers), is one thread among them. Reniced, the engine yields a core at once when that
loop wakes. Niceness weighs threads against others of the same scheduling group only:
with autogroup (each session its own group, as `llmq local up` starts its services) that
is the worker's process and its engine. Across groups the kernel shares the cores group by
group, so while the engine is busy, Kafka and the stream processor get half of them at best
when they wake. A session's group has a niceness of its own: the worker's, raised, lets
every other session at the default niceness go first (Kafka and the stream processor among
them), and the engine takes what they leave. With one container per service the
container's CPU weight plays that part (deployment's concern, not this module's).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

PROC = Path("/proc")
AUTOGROUP_RETRY_S = 0.11
"""The kernel refuses a second autogroup change within 0.1 s from an unprivileged caller."""


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


def nice_session(pid: int, nice: int, proc: Path = PROC) -> str | None:
    """The scheduling group (autogroup) of the session `pid` leads at niceness `nice`: None
    when set, else why not. Only a session leader's (a service started in a session of its
    own, as `llmq local up` starts them), never a shell's, and only where the kernel groups
    it by session: autogroup on, and the process in the root CPU cgroup (in a container or
    a unit with CPU control, its cgroup's weight decides instead)."""
    try:
        if os.getsid(pid) != pid:
            return "it does not lead its session"
        if (proc / "sys/kernel/sched_autogroup_enabled").read_text().strip() != "1":
            return "the kernel does not group by session"
        if not _in_root_cpu_cgroup((proc / str(pid) / "cgroup").read_text()):
            return "it is in a CPU cgroup of its own, whose weight decides instead"
        group = proc / str(pid) / "autogroup"
        try:
            group.write_text(str(nice))
        except BlockingIOError:  # the kernel takes one such change per 0.1 s from us
            time.sleep(AUTOGROUP_RETRY_S)
            group.write_text(str(nice))
    except OSError as exc:
        return f"its group was not changed: {exc}"
    return None


def _in_root_cpu_cgroup(cgroups: str) -> bool:
    """From /proc/PID/cgroup: the CPU controller's line (cgroup v1) or, without one, the
    unified hierarchy's (v2) names the root."""
    lines = [line.split(":", 2) for line in cgroups.splitlines() if line.count(":") >= 2]
    cpu = [path for _, controllers, path in lines if "cpu" in controllers.split(",")]
    unified = [path for number, controllers, path in lines if number == "0" and not controllers]
    return (cpu or unified) == ["/"]
