"""Way "lanes": what a backlog on the batch lane does to interactive requests.

In a stack of its own (an engine that served the same prompts just before would answer from
its prefix cache): interactive requests one at a time on the idle stack, then the workload
on the batch lane, all sent as its arrivals say, with interactive requests one at a time
until its last answer. Three results: the idle requests, the batch lane's workload, and the
interactive requests behind it. Their latency ratio is what the worker's lane settings
(LLMQ_LANE_YIELD_CAP, LLMQ_LANE_YIELD_HOLD_S) trade against the batch's throughput.

Interactive requests are greedy, exactly PROBE_TOKENS tokens long (ignore_eos) and never
cached, so their latency is the queue's and the engine's, not the model's whim.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from llmq.aio import AsyncClient
from schemas.lanes import Lane
from schemas.request import CacheMode
from tools.bench.samples import BenchRequest, Sample, WayResult
from tools.bench.stats import BATCH_LANE, INTERACTIVE_BUSY, INTERACTIVE_IDLE
from tools.bench.ways import Answered, Reply, drive
from tools.bench.ways.queue import RESULT_TIMEOUT_S, LlmqWay, answer, new_tenant, reply

IDLE_PROBES = 10
PROBE_TOKENS = 4
PROBE_GAP_S = 0.5
"""Between one interactive answer and the next request, as a person at a prompt would."""


def run(stack: LlmqWay, workload: list[BenchRequest], answered: Answered) -> list[WayResult]:
    """Idle interactive requests, then the batch lane's workload with interactive requests
    behind it."""
    return asyncio.run(_mix(stack, workload, answered))


async def _mix(stack: LlmqWay, workload: list[BenchRequest], answered: Answered) -> list[WayResult]:
    tenant, tag = new_tenant(), uuid.uuid4().hex[:8]
    async with AsyncClient(stack.service, tenant=tenant, reply_to=stack.reply_to) as client:
        idle, idle_s = await _probes(client, tag, lambda: False, IDLE_PROBES)
        batch = asyncio.create_task(
            drive(workload, partial(answer, client, lane=Lane.BATCH), answered)
        )
        busy, busy_s = await _probes(client, tag, batch.done, None, first=IDLE_PROBES)
        driven = await batch
    return [
        WayResult(INTERACTIVE_IDLE, idle, idle_s),
        WayResult(BATCH_LANE, driven.samples, driven.wall_s, cores=driven.cores),
        WayResult(INTERACTIVE_BUSY, busy, busy_s),
    ]


async def _probes(
    client: AsyncClient, tag: str, done: Callable[[], bool], most: int | None, first: int = 0
) -> tuple[list[Sample], float]:
    """Interactive requests one at a time, PROBE_GAP_S apart, until `done()` or `most` were
    answered (at least one); their samples (sent_s from the first) and the time they took."""
    start = time.monotonic()
    samples: list[Sample] = []
    while True:
        index = first + len(samples)
        request = BenchRequest(index, f"Say one word ({tag}-{index}).", PROBE_TOKENS, 0.0)
        sent_s = time.monotonic() - start
        found = await drive([request], partial(_probe, client), lambda: None, meter=False)
        samples += [replace(sample, sent_s=sent_s) for sample in found.samples]
        if done() or (most is not None and len(samples) >= most):
            return samples, time.monotonic() - start
        await asyncio.sleep(PROBE_GAP_S)


async def _probe(client: AsyncClient, request: BenchRequest, sent: float) -> Reply:
    """One interactive request, uncached and exactly max_tokens long; its whole result."""
    cid = await client.submit(
        request.prompt,
        lane=Lane.INTERACTIVE,
        cache=CacheMode.OFF,
        max_tokens=request.max_tokens,
        temperature=0.0,
        ignore_eos=True,
    )
    result = await client.result(cid, RESULT_TIMEOUT_S)
    return reply(result, None, time.monotonic())
