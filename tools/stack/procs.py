"""Background processes of the local stack: started detached, tracked by pid files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.files import write_whole


@dataclass(frozen=True)
class Proc:
    """One long-running process: its command, its log, its pid file."""

    name: str
    argv: Sequence[str]
    run_dir: Path
    env: Mapping[str, str] | None = None
    stop_timeout_s: float = 30.0

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    @property
    def launch_file(self) -> Path:
        return self.run_dir / f"{self.name}.launch"

    def launch(self) -> dict[str, object]:
        """What it is started with: its command, its own settings, and a digest of each file
        a `*_FILE` setting names (a catalog edited in place is another launch)."""
        return {"argv": list(self.argv), "env": dict(self.env or {}), "files": self._files()}

    def _files(self) -> dict[str, str | None]:
        env = self.env or {}
        return {key: _digest(Path(path)) for key, path in env.items() if key.endswith("_FILE")}

    def drift(self) -> list[str]:
        """How what it would be started with now differs from what it was started with (the
        record its start left; nothing known: none)."""
        try:
            was = json.loads(self.launch_file.read_text())
        except (FileNotFoundError, ValueError):
            return []
        found = [] if was.get("argv") == list(self.argv) else ["its command"]
        before, after = was.get("env", {}), self.env or {}
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) != after.get(key):
                found.append(f"{key} {before.get(key, '(unset)')} -> {after.get(key, '(unset)')}")
        files = was.get("files", {})
        changed = [key for key, digest in self._files().items() if files.get(key, digest) != digest]
        return found + [f"the file {key} names" for key in changed]

    def pid(self) -> int | None:
        """The pid of the running process, or None (no pid file, dead, or a reused pid).

        The pid file also holds the kernel's start time of the process, so a pid reused by
        another process after a crash is not mistaken for ours (titles change: faust and
        Redis rewrite theirs).
        """
        try:
            pid_text, started = self.pid_file.read_text().split()
            pid = int(pid_text)
        except (FileNotFoundError, ValueError):
            return None
        if _start_time(pid) != started or _is_zombie(pid):
            return None
        return pid

    def start(self) -> int:
        """Start detached (its own session, so it outlives the CLI); return its pid. What a
        killed run of it left behind goes first (see `stop_orphans`)."""
        self.stop_orphans()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self.env or {})}
        with self.log_file.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            pid = os.posix_spawnp(
                self.argv[0],
                list(self.argv),
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log.fileno(), 1),
                    (os.POSIX_SPAWN_DUP2, log.fileno(), 2),
                ],
                setsid=True,
            )
        write_whole(self.pid_file, f"{pid} {_start_time(pid)}")
        write_whole(self.launch_file, json.dumps(self.launch()))
        return pid

    def stop(self) -> bool:
        """SIGTERM, wait for a graceful exit, then SIGKILL what is left of its process group.

        SIGTERM goes to the leader alone: it drains and stops its own children (a vLLM
        engine process must outlive the worker's drain). Returns whether it was running.
        """
        pid = self.pid()
        if pid is None:
            self.stop_orphans()
            self._forget()
            return False
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        # Wait for the whole group: children (vLLM's engine) hold the leader's sockets.
        deadline = time.monotonic() + 10
        while (self.pid() is not None or _group_alive(pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._forget()
        return True

    def _forget(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        self.launch_file.unlink(missing_ok=True)

    def stop_orphans(self) -> bool:
        """SIGKILL what is left of the process group its pid file names when its leader is
        gone (killed, or crashed): a vLLM engine core outlives its worker and holds the
        worker's ports and memory. Only members carrying this process's environment (llmq's
        settings) are taken, whatever reused the number. Returns whether any was."""
        try:
            pgid = int(self.pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return False
        if not self.env or self.pid() is not None:
            return False
        marks = {f"{key}={value}".encode() for key, value in self.env.items()}
        orphans = [p for p in _group(pgid) if marks <= _environ(p)]
        for orphan in orphans:
            _signal(orphan, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(not _is_zombie(p) for p in orphans) and time.monotonic() < deadline:
            time.sleep(0.1)
        return bool(orphans)

    def tail(self, lines: int = 25) -> str:
        """The end of its log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _digest(path: Path) -> str | None:
    """The SHA-256 of a file's content (None: no such file)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group(pgid: int) -> list[int]:
    """The processes of a process group now."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _stat(int(entry.name))[2:3] == [str(pgid)]
    ]


def _environ(pid: int) -> set[bytes]:
    """A process's environment as KEY=VALUE entries; empty where it may not be read."""
    try:
        return set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    except OSError:
        return set()


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state first); [] if no such process."""
    try:
        return _after_name(Path(f"/proc/{pid}/stat").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return []


def _after_name(stat: str) -> list[str]:
    """The fields of a /proc/PID/stat line after the command name, which may hold spaces."""
    return stat.rsplit(")", 1)[1].split()


def running() -> dict[int, tuple[str, str, float]]:
    """Every process of the machine now: pid -> (name, command line, CPU seconds so far: user
    and system, all threads). A process that goes, or may not be read, is left out."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = _after_name(stat)
        out[int(entry.name)] = (name, argv.strip(), (int(fields[11]) + int(fields[12])) / tick)
    return out


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields else None


def _is_zombie(pid: int) -> bool:
    """True for a dead process not yet reaped; reaps it when it is our own child."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    fields = _stat(pid)
    return not fields or fields[0] == "Z"
