"""Ways of serving the benchmark's workload, and what they share: the model, its engine
settings, the request body and the pacing of requests by their arrival times."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from schemas.catalog import Catalog, ModelSpec
from schemas.lanes import Lane
from schemas.request import ChatBody, ChatMessage
from tools.bench.cpu import CpuMeter
from tools.bench.samples import BenchRequest, Sample
from workers.checkpoint import resolve_model_source
from workers.engine_args import cpu_dtype
from workers.openai_engine import OpenAIEngine
from workers.settings import WorkerSettings

MODEL = "smollm2-135m"
"""The built-in catalog's model, served the same way by every way."""
LANE = Lane.STANDARD
"""llmq's default lane; its vLLM priority is given to the other ways too."""
WAYS = ("engine", "vllm-serve", "llmq", "gateway", "lanes")
"""The ways of serving, in their default order: llmq from a Kafka app, through its HTTP
front door, and on the batch lane with interactive requests behind it (tools.bench.ways.lanes)."""
ANSWERED = "answered"
"""The line the engine way's child process prints per answer (its progress)."""
STOP_TIMEOUT_S = 30.0
"""How long a way's processes may take to exit on SIGTERM before they are killed."""

Answered = Callable[[], object]
"""Called once per answered request (the runner's progress bar)."""
Say = Callable[[str], None]
"""Where a way says what it is doing (starting, warming up, stopping)."""


@dataclass(frozen=True)
class Reply:
    """What a way saw of one answer; the pacing adds when it was sent and how long it took."""

    prompt_tokens: int
    output_tokens: int
    ttft_s: float | None
    engine_s: float | None = None
    cache: str = "none"
    error: str | None = None
    done_at: float | None = None
    """When the whole answer was there (time.monotonic()), when the way went on after it
    (to read the final result); else when the way returned."""


Answer = Callable[[BenchRequest, float], Awaitable[Reply]]
"""Serves one request that was sent at the given time.monotonic()."""


def model_spec() -> ModelSpec:
    """The built-in catalog's entry for MODEL: context length, max_inflight, prices."""
    spec = Catalog.builtin().get(MODEL)
    if spec is None:
        raise RuntimeError(f"the built-in catalog has no model {MODEL!r}")
    return spec


def model(cache_dir: Path) -> tuple[ModelSpec, Path]:
    """The catalog entry and the checkpoint directory every way serves."""
    spec = model_spec()
    if spec.source is None:
        raise RuntimeError(f"the built-in catalog's {MODEL!r} has no local checkpoint")
    return spec, resolve_model_source(spec.source, cache_dir / "models")


def engine_settings() -> dict[str, object]:
    """The engine settings every way runs with, for the record."""
    spec = model_spec()
    return {
        "model": f"{spec.name} (SmolLM2-135M-Instruct)",
        "dtype": f"{cpu_dtype()} in eager mode on a CPU (the model's own and CUDA graphs on a GPU)",
        "max_model_len": spec.max_model_len,
        "max_num_seqs": spec.max_inflight,
        "kv_cache_gib": WorkerSettings().engine_env()["VLLM_CPU_KVCACHE_SPACE"],
        "scheduling": "priority",
        "temperature": 0,
        "ignore_eos": False,
    }


def set_engine_env() -> None:
    """The CPU engine's environment, as the worker sets it (WorkerSettings.engine_env)."""
    os.environ.update(WorkerSettings().engine_env())


def body(request: BenchRequest) -> ChatBody:
    """The chat body of a request: greedy, without ignore_eos (answers end where the model
    ends them, so output lengths are the model's and are counted, not assumed)."""
    return ChatBody(
        messages=[ChatMessage(role="user", content=request.prompt)],
        max_tokens=request.max_tokens,
        temperature=0.0,
    )


class Driven(NamedTuple):
    """What `drive` saw."""

    samples: list[Sample]
    """One per request, in workload order."""
    wall_s: float
    """From the start to the last answer."""
    cores: dict[str, float]
    """Cores each part of the machine kept busy meanwhile (tools.bench.cpu); {} unmetered."""


async def drive(
    workload: list[BenchRequest], answer: Answer, answered: Answered, *, meter: bool = True
) -> Driven:
    """Send every request at its arrival time, all in flight together, and (`meter`) meter
    the machine's cores while they are answered."""
    cpu = CpuMeter() if meter else None
    start = time.monotonic()

    async def one(request: BenchRequest) -> Sample:
        await asyncio.sleep(max(0.0, start + request.arrival_s - time.monotonic()))
        sent = time.monotonic()
        try:
            reply = await answer(request, sent)
        except Exception as exc:  # a failed request is a sample too; the run goes on
            reply = Reply(0, 0, None, error=f"{type(exc).__name__}: {exc}")
        latency = (reply.done_at or time.monotonic()) - sent
        answered()
        return Sample(
            index=request.index,
            kind=request.kind,
            ok=reply.error is None,
            sent_s=sent - start,
            latency_s=latency,
            ttft_s=reply.ttft_s,
            engine_s=reply.engine_s,
            prompt_tokens=reply.prompt_tokens,
            output_tokens=reply.output_tokens,
            cache=reply.cache,
            error=reply.error,
        )

    samples = await asyncio.gather(*(one(r) for r in workload))
    # To the last answer's end as each way sees it (a streamed one's last piece), not to the
    # return of the last call: llmq's reads the result after its stream.
    wall = max((s.sent_s + s.latency_s for s in samples), default=time.monotonic() - start)
    return Driven(list(samples), wall, cpu.cores() if cpu else {})


async def streamed(
    engine: OpenAIEngine, request: BenchRequest, sent: float, priority: int = LANE.priority
) -> Reply:
    """One chat completion streamed from an OpenAI-compatible server (vLLM's, llmq's front
    door); TTFT is the first step that carries text, the token counts the server's usage."""
    first: float | None = None
    prompt_tokens = output_tokens = 0
    async for step in engine.generate(f"bench-{request.index}", body(request), priority):
        if first is None and step.new_tokens:
            first = time.monotonic()
        prompt_tokens = step.prompt_tokens or prompt_tokens
        output_tokens += step.new_tokens
    return Reply(prompt_tokens, output_tokens, None if first is None else first - sent)


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to a process started with start_new_session (it and the engine core it
    spawned), SIGKILL if they hang."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def log_tail(path: Path, chars: int = 3000) -> str:
    """The end of a process's log, for an error message."""
    return path.read_text(errors="replace")[-chars:]
