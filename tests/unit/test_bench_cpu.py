"""The benchmark's CPU meter: which part a process is, and the seconds it counts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tools.bench import cpu
from tools.bench.cpu import BENCH, ENGINE, OTHER, CpuMeter, part
from tools.stack.procs import running

OWN = os.getpid()


@pytest.mark.parametrize(
    ("name", "argv", "expected"),
    [
        ("VLLM::Worker", "", ENGINE),
        ("VLLM::EngineCore", "", ENGINE),
        ("VLLM::APIServer", "", "vllm-serve"),
        ("java", "java -Xms256m -cp /libs/* kafka.Kafka /run/server.properties", "kafka"),
        ("redis-server", "redis-server 127.0.0.1:30778", "redis"),
        ("python", "[Faust:Worker] -init- llmq-streams -p 6066 /tmp/x/streams", "streams"),
        ("python", "/venv/bin/python -m streams", "streams"),
        ("python", "/venv/bin/python -m workers", "worker"),
        ("python", "/venv/bin/python -m gateway", "gateway"),
        ("python", "/venv/bin/python -m tools.stack.autoscale", "autoscaler"),
        ("python", "/venv/bin/python -m vllm.entrypoints.openai.api_server --port 1", "vllm-serve"),
        ("python", "/venv/bin/python /venv/bin/llmq bench --requests 64", BENCH),
        ("python", "/venv/bin/python -m tools.bench.ways.engine /tmp/w.json", BENCH),
        ("kworker/0:1", "", OTHER),
        ("sshd", "sshd: root", OTHER),
    ],
)
def test_part_names_a_process_by_its_name_and_command_line(
    name: str, argv: str, expected: str
) -> None:
    assert part(OWN + 1, name, argv, OWN) == expected


def test_part_counts_the_meter_own_process_as_the_bench() -> None:
    assert part(OWN, "python", "/venv/bin/python -m pytest", OWN) == BENCH


def test_cpu_meter_counts_busy_processes_from_its_making_and_not_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    # The spinner is a part of its own; the machine's other processes are no concern here.
    monkeypatch.setattr(cpu, "part", lambda pid, *_: "spin" if pid == spin.pid else OTHER)

    def spun() -> float:
        return running()[spin.pid][2]

    try:
        deadline = time.monotonic() + 30
        while spun() < 1.0:  # busy before the meter: not counted
            assert time.monotonic() < deadline, "the spinning process never ran"
            time.sleep(0.1)
        meter = CpuMeter()
        before = spun()
        while meter.spent().get("spin", 0.0) < 0.3:
            assert time.monotonic() < deadline, "the spinning process was never counted"
            time.sleep(0.1)
        counted = meter.spent()["spin"]
        assert counted <= spun() - before + 0.05
        assert meter.cores()["spin"] > 0
    finally:
        spin.kill()
        spin.wait()


def test_cpu_meter_counts_its_own_process_as_the_bench() -> None:
    meter = CpuMeter()
    own = time.process_time()
    while time.process_time() - own < 0.3:
        pass
    assert meter.spent()[BENCH] >= 0.25
