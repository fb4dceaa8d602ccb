"""Where a machine's cores go during a run: CPU seconds by part (the engine, each service of
the stack, this benchmark, the rest), read from /proc at the start and the end."""

from __future__ import annotations

import os
import time

from tools.stack.procs import running

ENGINE = "engine"
"""vLLM's engine processes (VLLM::EngineCore and its VLLM::Worker): the model's compute."""
BENCH = "bench"
"""This benchmark: the app sending the load (and, in the engine way, vLLM's front-end)."""
OTHER = "other"
"""Everything else on the machine."""

PARTS = (ENGINE, "worker", "streams", "kafka", "redis", "gateway", "autoscaler", "vllm-serve")
"""The parts, in the order a report shows them (then BENCH and OTHER)."""

_BY_COMMAND = (
    ("kafka.Kafka", "kafka"),
    ("[Faust:Worker]", "streams"),
    ("-m streams", "streams"),
    ("-m workers", "worker"),
    ("-m gateway", "gateway"),
    ("-m tools.stack.autoscale", "autoscaler"),
    ("vllm serve", "vllm-serve"),
    ("vllm.entrypoints", "vllm-serve"),
    ("llmq bench", BENCH),
    ("tools.bench", BENCH),
)


def part(pid: int, name: str, argv: str, own: int) -> str:
    """Which part of the machine a process is, from its name and command line."""
    if pid == own:
        return BENCH
    if name.startswith("VLLM::"):
        return "vllm-serve" if name.startswith("VLLM::API") else ENGINE
    if name == "redis-server":
        return "redis"
    return next((p for marker, p in _BY_COMMAND if marker in argv), OTHER)


class CpuMeter:
    """CPU seconds every part of the machine uses from its making to `spent()`. A process
    started in between counts from its start; one gone by the end is not counted, and
    neither is a new process that took the pid of one gone in between (rare)."""

    def __init__(self) -> None:
        self._own = os.getpid()
        self._start = {pid: seconds for pid, (_, _, seconds) in running().items()}
        self._started_at = time.monotonic()

    def spent(self) -> dict[str, float]:
        """CPU seconds by part since the meter was made, biggest first."""
        totals: dict[str, float] = {}
        for pid, (name, argv, seconds) in running().items():
            used = seconds - self._start.get(pid, 0.0)
            key = part(pid, name, argv, self._own)
            totals[key] = totals.get(key, 0.0) + max(0.0, used)
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def cores(self) -> dict[str, float]:
        """Cores each part kept busy on average since the meter was made."""
        wall = max(time.monotonic() - self._started_at, 1e-9)
        return {key: seconds / wall for key, seconds in self.spent().items()}
