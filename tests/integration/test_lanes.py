"""Priority lanes on the real stack: interactive requests stay prompt behind a batch backlog."""

from __future__ import annotations

import statistics
import time
import uuid

import pytest

from llmq.client import Client
from schemas.lanes import Lane
from schemas.request import CacheMode
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings
from tests.integration.helpers import metric
from tools import sharegpt
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

BATCH = 200
INTERACTIVE = 12
MAX_TOKENS = 48
RESULT_TIMEOUT_S = 400


def _prompts(stack: LocalStack, n: int) -> list[str]:
    """`n` distinct ShareGPT first turns, short enough to keep the backlog's prefill modest."""
    sample = sharegpt.sample(n * 2, stack.settings.cache_dir, seed=7, max_prompt_chars=2000)
    return list(dict.fromkeys(p.text for p in sample))[:n]


def _seconds(results: list[InferenceResult]) -> list[float]:
    """End-to-end latency of each result, from the app's submit to the result."""
    return [(r.timings.total_ms or 0.0) / 1000 for r in results]


def _summary(name: str, results: list[InferenceResult]) -> str:
    """p50 and p95 latency, and the median of each stage, in seconds."""
    latencies = _seconds(results)
    p95 = statistics.quantiles(latencies, n=20, method="inclusive")[-1]
    medians = {
        stage: statistics.median(getattr(r.timings, f"{stage}_ms") or 0.0 for r in results)
        for stage in ("queue", "ttft", "engine")
    }
    stages = "  ".join(f"{stage} {ms / 1000:.2f}" for stage, ms in medians.items())
    return f"  {name:<12}p50 {statistics.median(latencies):6.2f}  p95 {p95:6.2f}  (median {stages})"


def test_interactive_requests_are_answered_promptly_behind_a_batch_backlog(
    stack: LocalStack, service_settings: ServiceSettings, reply_topic: str
) -> None:
    prompts = _prompts(stack, BATCH + INTERACTIVE + 2)
    worker_port = stack.settings.metrics_base_port + 1
    tenant = f"lanes-{uuid.uuid4().hex[:8]}"
    with Client(service_settings, reply_to=reply_topic) as client:

        def submit(prompt: str, lane: Lane) -> str:
            return client.submit(
                prompt,
                lane=lane,
                tenant=tenant,
                cache=CacheMode.OFF,
                max_tokens=MAX_TOKENS,
                temperature=0.0,
            )

        # 1) For reference: interactive requests on an idle engine, one at a time.
        idle = [client.result(submit(p, Lane.INTERACTIVE)) for p in prompts[:2]]
        # 2) Queue the batch backlog, and let it fill the engine.
        backlog_at = time.time()
        batch_ids = [submit(p, Lane.BATCH) for p in prompts[2 : BATCH + 2]]
        deadline = time.monotonic() + 120
        while metric(worker_port, "llmq_worker_in_flight") < 32:
            assert time.monotonic() < deadline, "the worker never took up the batch backlog"
            time.sleep(0.2)
        # 3) Interactive requests arrive one by one while the backlog is being served.
        interactive_ids = []
        for prompt in prompts[BATCH + 2 :]:
            interactive_ids.append(submit(prompt, Lane.INTERACTIVE))
            time.sleep(1.0)
        interactive = [client.result(cid, timeout=RESULT_TIMEOUT_S) for cid in interactive_ids]
        batch = [client.result(cid, timeout=RESULT_TIMEOUT_S) for cid in batch_ids]

    everything = idle + interactive + batch
    assert all(r.status == "ok" for r in everything), [r.error for r in everything if r.error]
    last_interactive = max(r.finished_at for r in interactive)
    batch_after = sum(r.finished_at > last_interactive for r in batch)
    drained_s = max(r.finished_at for r in batch) - backlog_at
    print(
        f"\n{BATCH} batch + {INTERACTIVE} interactive requests, max_tokens {MAX_TOKENS}, "
        f"end-to-end latency (s)\n"
        f"  idle interactive, alone: {' '.join(f'{x:.2f}' for x in _seconds(idle))}\n"
        f"{_summary('interactive', interactive)}\n{_summary('batch', batch)}\n"
        f"  interactive, in the order sent: {' '.join(f'{x:.1f}' for x in _seconds(interactive))}\n"
        f"  {batch_after} batch requests were unanswered when the last interactive one was; "
        f"the backlog drained in {drained_s:.1f} s"
    )
    assert batch_after > 0, "every interactive request is answered before the backlog drains"
    interactive_p50 = statistics.median(_seconds(interactive))
    assert interactive_p50 < statistics.median(_seconds(batch)) / 2
