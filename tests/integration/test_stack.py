"""The local stack's lifecycle: start twice, crash, records fetched and dropped, SIGTERM
mid-batch. Runs after the pipeline tests (file order) because it kills and restarts parts
of the shared stack."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

from llmq.client import Client
from llmq.groups import DEAD, EMPTY, Group, describe_groups
from schemas.names import REQUESTS, worker_group
from schemas.request import CacheMode
from tests.integration.helpers import REPO, metric
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

DROPS = Path(__file__).parent / "drops"
"""Its sitecustomize makes a stream processor drop records as faust does on some restarts."""


def _pids(stack: LocalStack) -> dict[str, int | None]:
    return {row.name: row.pid for row in stack.status()}


def test_status_reports_every_component_ready(cli_env: dict[str, str], llmq_bin: Path) -> None:
    out = subprocess.run(
        [str(llmq_bin), "local", "status"],
        env=cli_env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("kafka", "redis", "streams", "worker-smollm2-135m"):
        line = next(line for line in out.stdout.splitlines() if line.startswith(name))
        assert " yes " in line, line


def test_every_workers_group_is_described_in_one_call(stack: LocalStack) -> None:
    """Each model's group has its worker; a group whose members left keeps its offsets
    (Empty: a pool scaled to zero), one nobody joined does not exist (Dead)."""
    groups = [worker_group(name) for name in stack.catalog.names]
    left, nobody = f"llmq.test.left.{uuid.uuid4().hex[:8]}", "llmq.test.nobody"
    consumer = KafkaConsumer(
        bootstrap_servers=stack.settings.kafka_bootstrap, group_id=left, enable_auto_commit=False
    )
    consumer.commit({TopicPartition(REQUESTS, 0): OffsetAndMetadata(0, "", -1)})
    consumer.close()

    async def describe() -> dict[str, Group]:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap)
        await admin.start()
        try:
            return await describe_groups(admin, [*groups, left, nobody])
        finally:
            await admin.close()

    found = asyncio.run(describe())
    # One worker per model (no autoscaler here).
    assert {g: found[g].members for g in groups} == dict.fromkeys(groups, 1)
    assert found[left] == Group(0, EMPTY) and found[nobody] == Group(0, DEAD)


def test_starting_twice_starts_nothing(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_PARTITONS", "8")  # misspelt: the default would stay in force
    before = _pids(stack)
    lines: list[str] = []
    stack.up(say=lines.append)
    assert _pids(stack) == before
    assert not any(line.startswith("starting") for line in lines)
    said = "warning: LLMQ_PARTITONS is set, but no part of llmq reads it"
    assert f"{said} (did you mean LLMQ_PARTITIONS?)" in lines


def test_a_crashed_stream_processor_is_restarted_and_serves(
    stack: LocalStack, client: Client
) -> None:
    pid = _pids(stack)["streams"]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _pids(stack)["streams"] is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _pids(stack)["streams"] is None
    lines: list[str] = []
    stack.up(say=lines.append)
    assert "starting streams" in " ".join(lines)
    assert _pids(stack)["streams"] not in (None, pid)
    result = client.ask(
        "What is the capital of France?",
        max_tokens=24,
        ignore_eos=True,  # a whole generation, whenever the model would stop
        temperature=0.0,
        cache=CacheMode.OFF,
        timeout=180,
    )
    assert result.status == "ok", result.error
    assert result.response is not None and result.response.usage.completion_tokens == 24


def test_records_the_stream_processor_fetched_and_dropped_are_read_again(
    stack: LocalStack, client: Client
) -> None:
    """Each request is the last record of its partition when it comes, and the first one
    fetched from a partition is dropped: no later record shows the hole to the commit, so
    only the check of the partitions' ends (streams/offsets.py, Tails) gets it answered."""
    normal = stack.streams()
    assert normal.proc.stop(), "the stream processor was running"
    env = {**(normal.proc.env or {}), "PYTHONPATH": os.pathsep.join([str(DROPS), str(REPO)])}
    dropping = replace(normal, proc=replace(normal.proc, env=env))
    try:
        stack.start(dropping, say=lambda _: None)
        for n in range(4):
            result = client.ask(
                f"Say {uuid.uuid4().hex[:6]} once. ({n})",
                max_tokens=4,
                temperature=0.0,
                cache=CacheMode.OFF,
                timeout=120,
            )
            assert result.status == "ok", result.error
        run = normal.proc.log_file.read_text().split(f"starting {normal.proc.name}")[-1]
        assert f"dropped {REQUESTS}[" in run, "the sitecustomize dropped nothing"
        assert "were read past unhandled at the end; reading them again" in run
    finally:
        dropping.proc.stop()
        stack.up(say=lambda _: None)


def test_a_worker_stopped_mid_batch_loses_no_request(stack: LocalStack, client: Client) -> None:
    ids = [
        client.submit(
            f"Write a sentence about the number {i}.",
            max_tokens=64,
            ignore_eos=True,  # the batch runs its 64 tokens: still in the engine at the stop
            temperature=0.0,
            cache=CacheMode.OFF,
        )
        for i in range(16)
    ]
    worker = next(c.proc for c in stack.components() if c.proc.name.startswith("worker-"))
    port = stack.settings.metrics_base_port + 1
    deadline = time.monotonic() + 60
    while metric(port, "llmq_worker_in_flight") == 0:  # the batch is in its engine
        assert time.monotonic() < deadline, "the worker never took up the batch"
        time.sleep(0.1)
    assert worker.stop(), "the worker was running"
    stack.up(say=lambda _: None)
    results = [client.result(cid, timeout=300) for cid in ids]
    assert [r.status for r in results] == ["ok"] * len(ids)
    # The run that got SIGTERM is the log's second-to-last segment: it drained and exited
    # by itself (a SIGKILL after the timeout would leave no "stopped" line).
    stopped_run = worker.log_file.read_text().split(f"starting {worker.name}")[-2]
    assert "worker local-smollm2-135m stopped" in stopped_run
