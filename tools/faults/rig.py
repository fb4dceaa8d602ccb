"""The stack under test, as the scenarios handle it: its parts by role, their pids, a
kill -9, healing with `llmq local up`, and how hard to load it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from schemas.catalog import ModelSpec
from tools.faults.probe import metric
from tools.stack.stack import Component, LocalStack

Say = Callable[[str], None]

BASE_RATE = 2.0
"""Requests a second of the steady load at scale 1: a third or so of what SmolLM2-135M
serves on a 2-core CPU at 16 tokens, so the engine always has some in flight."""
KILL_WAIT_S = 10.0


@dataclass(frozen=True)
class Rig:
    """A running LocalStack and the scale of the load."""

    stack: LocalStack
    scale: float
    say: Say

    @property
    def bootstrap(self) -> str:
        return self.stack.settings.kafka_bootstrap

    @property
    def rate(self) -> float:
        """The steady load's requests a second."""
        return BASE_RATE * self.scale

    @property
    def models(self) -> list[str]:
        """Every catalog model."""
        return self.stack.catalog.names

    @property
    def model(self) -> ModelSpec:
        """The model under load: the catalog's default."""
        spec = self.stack.catalog.get(self.stack.catalog.default)
        if spec is None:  # the catalog validates its default
            raise RuntimeError("the catalog has no default model")
        return spec

    def component(self, name: str) -> Component:
        """kafka (kafka-2, kafka-3 in a cluster), redis, streams, or worker (the default
        model's)."""
        wanted = f"worker-{self.model.name}" if name == "worker" else name
        return next(c for c in self.stack.components() if c.proc.name == wanted)

    def pids(self) -> dict[str, int | None]:
        """Every component's pid now (None: not running)."""
        return {c.proc.name: c.proc.pid() for c in self.stack.components()}

    def heal(self) -> list[str]:
        """`llmq local up`: start what is not running, wait for all; returns what it started."""
        started: list[str] = []

        def note(line: str) -> None:
            if line.startswith("starting "):
                started.append(line.split()[1])
                self.say(f"  {line}")
            elif line.startswith("  waiting"):
                self.say(line)

        self.stack.up(say=note)
        return started

    def stop(self, comp: Component) -> float | None:
        """SIGTERM a component and wait until it is gone; the seconds that took, or None when
        it was not running (it left before, which is no drain, however quick)."""
        began = time.monotonic()
        if not comp.proc.stop():
            return None
        return time.monotonic() - began

    def in_flight(self, worker: Component) -> float:
        """Generations in a worker's engine now (0 when it does not answer)."""
        return metric(worker.endpoint, "llmq_worker_in_flight") or 0.0


def kill9(comp: Component) -> int:
    """SIGKILL a component's whole process group (a worker's engine core is in it) and wait
    until it is gone; returns the pid it had."""
    pid = comp.proc.pid()
    if pid is None:
        raise RuntimeError(f"{comp.proc.name} is not running")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline and (comp.proc.pid() is not None or _group_alive(pid)):
        time.sleep(0.1)
    return pid


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(done: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll `done` until it holds or the time is up."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def wait_moving(
    done: Callable[[], bool], progress: Callable[[], float], idle_s: float, interval_s: float = 0.5
) -> bool:
    """Poll `done` until it holds, as long as `progress()` rose within the last `idle_s`:
    a slower machine gets longer, a stuck one no longer than `idle_s`."""
    best, moved = progress(), time.monotonic()
    while not done():
        now = progress()
        if now > best:
            best, moved = now, time.monotonic()
        elif time.monotonic() - moved > idle_s:
            return False
        time.sleep(interval_s)
    return True
