"""Deadlines and retries on the real stack: a late generation is aborted in the engine, and a
model that keeps failing is retried with backoff, then dead-lettered with a failed reply."""

from __future__ import annotations

import time

import pytest

from llmq.client import Client, tail
from schemas.errors import ErrorCode
from schemas.names import COMPLETIONS, DLQ, HEADER_REASON, HEADER_SOURCE_TOPIC
from tests.integration.helpers import collect, header, metric
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LONG = "Count from 1 to 2000, one number per line, and say nothing else."


def test_a_generation_that_runs_past_its_deadline_is_aborted_in_the_engine(
    stack: LocalStack, client: Client
) -> None:
    port = stack.settings.metrics_base_port + 1
    expired_before = metric(port, "llmq_worker_generations_total", outcome="expired")
    # ignore_eos: the model cannot stop by itself after a few hundred tokens, inside the
    # deadline; 2000 tokens (near the model's 2048) take far longer than 3 s on any engine
    # this test runs on.
    cid = client.submit(LONG, max_tokens=2000, temperature=0, deadline_s=3.0, ignore_eos=True)
    result = client.result(cid, timeout=60)
    assert result.status == "error"
    assert result.error is not None
    assert result.error.code is ErrorCode.EXPIRED
    assert "aborted after" in result.error.message, result.error.message
    assert metric(port, "llmq_worker_generations_total", outcome="expired") == expired_before + 1
    # Aborted, not left running: the engine is empty again at once, not after 2000 tokens.
    deadline = time.monotonic() + 10
    while metric(port, "llmq_worker_in_flight") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(port, "llmq_worker_in_flight") == 0


def test_a_model_that_keeps_failing_is_retried_then_dead_lettered(
    stack: LocalStack, client: Client
) -> None:
    streams_port = stack.settings.metrics_base_port
    retried_before = metric(streams_port, "llmq_streams_reroutes_total", kind="retried")
    dlq = tail(stack.settings.kafka_bootstrap, DLQ)
    try:
        cid = client.submit("Hello there", model="dead-end", max_tokens=8, temperature=0)
        result = client.result(cid, timeout=120)
        records = collect(
            dlq, lambda rs: any(header(r, HEADER_SOURCE_TOPIC) == COMPLETIONS for r in rs), 30
        )
    finally:
        dlq.close()
    assert result.status == "error"
    assert result.error is not None
    assert result.error.code is ErrorCode.ENGINE_ERROR
    assert result.error.message.startswith("failed after 3 attempts: "), result.error.message
    assert result.error.retriable
    assert result.route is not None
    assert result.route.tried == []  # no fallback: the same model, three times
    assert metric(streams_port, "llmq_streams_reroutes_total", kind="retried") == (
        retried_before + 2
    )
    [dead] = [r for r in records if header(r, HEADER_SOURCE_TOPIC) == COMPLETIONS]
    assert (header(dead, HEADER_REASON) or "").startswith("failed after 3 attempts: ")
    assert cid.encode() in dead.value
