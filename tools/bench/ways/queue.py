"""Ways "llmq" and "gateway": requests through a local stack of its own (Kafka, Redis, the
stream processor, one vLLM worker, the front door), as a Kafka app streaming with llmq's
async client, and as an HTTP app streaming from the front door with the same client as the
vllm-serve way. TTFT is the first piece of text the app receives in both; latency ends at
the answer's last piece. A cached answer arrives as one piece.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from types import TracebackType

from kafka import KafkaConsumer

from llmq.aio import AsyncClient
from llmq.cli import uninterrupted
from llmq.client import Client, tail
from schemas.catalog import ModelSpec
from schemas.errors import ErrorCode
from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.names import METERING, TopicSpec
from schemas.result import CacheStatus, InferenceResult
from schemas.retry import RetryPolicy
from schemas.settings import ServiceSettings
from tools.bench.samples import BenchRequest, WayResult
from tools.bench.ways import (
    LANE,
    MODEL,
    Answered,
    Driven,
    Reply,
    Say,
    body,
    drive,
    model_spec,
    set_engine_env,
    streamed,
)
from tools.stack.ports import free_block
from tools.stack.settings import LocalSettings
from tools.stack.stack import LocalStack
from tools.topics import ensure_topics
from workers.openai_engine import OpenAIEngine

WAY = "llmq"
GATEWAY = "gateway"
STACK_PORTS = 6
"""Kafka, its controller, Redis, the stream processor's and the worker's /metrics, the front
door; each further worker takes the next port."""
RESULT_TIMEOUT_S = 900.0
METERING_WAIT_S = 15.0
"""How long metering events may trail the last result."""


class LlmqWay:
    """The local stack on free ports with a temporary state dir: up (and warmed with one
    request) on enter, down on exit. Each run is a fresh tenant, so caches start empty."""

    def __init__(
        self,
        cache_dir: Path,
        say: Say = lambda _: None,
        *,
        replicas: int = 1,
    ) -> None:
        self._cache_dir = cache_dir
        self._say = say
        self._replicas = replicas
        self._state: tempfile.TemporaryDirectory[str] | None = None
        self._stack: LocalStack | None = None
        self._service: ServiceSettings | None = None
        self._door = ""
        self._reply_to = f"bench.replies.{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> LlmqWay:
        set_engine_env()
        self._state = tempfile.TemporaryDirectory(prefix="llmq-bench-stack-")
        base = free_block(STACK_PORTS + self._replicas - 1)
        local = LocalSettings(
            state_dir=Path(self._state.name),
            cache_dir=self._cache_dir,
            kafka_port=base,
            redis_port=base + 2,
            metrics_base_port=base + 3,
            api_port=base + 5,
            models_file=None,
            tenants_file=None,
            compress_prompts=False,
            autoscale=False,  # a fixed pool: one worker by default, like the other ways
            min_replicas=self._replicas,
            max_replicas=max(2, self._replicas),
        )
        self._stack = LocalStack(local)
        self._say(f"{WAY}: starting the local stack (Kafka on port {base})")
        try:
            self._stack.up(say=lambda line: self._say(f"{WAY}: {line}"))
            self._service = ServiceSettings(
                kafka_bootstrap=local.kafka_bootstrap, redis_url=local.redis_url
            )
            self._door = f"http://127.0.0.1:{local.api_port}/v1"
            ensure_topics(self._service.kafka_bootstrap, [TopicSpec(self._reply_to, 1)])
            # The whole path, caches included (a miss: the stack and its tenant are new).
            with Client(self._service, reply_to=self._reply_to) as client:
                warm = client.ask(
                    "Say hello.",
                    timeout=RESULT_TIMEOUT_S,
                    tenant="bench-warmup",
                    max_tokens=8,
                    temperature=0.0,
                )
            if warm.status != "ok":
                raise RuntimeError(f"llmq failed the warm-up request: {warm.error}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self._say(f"{WAY}: warmed up")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        with uninterrupted("stopping the local stack"):
            if self._stack is not None:
                self._stack.down(say=lambda _: None)
                self._stack = None
            if self._state is not None:
                self._state.cleanup()
                self._state = None

    def run(
        self,
        workload: list[BenchRequest],
        answered: Answered = lambda: None,
        way: str = WAY,
        *,
        tenant: str | None = None,
        stream: bool = True,
    ) -> WayResult:
        """Serve the workload through Kafka as `tenant` (a fresh one by default), recorded
        under `way`; streamed, or (`stream=False`) each answer read as one result.
        Generations and cost are the tenant's metering events."""
        service = self.service
        tenant = tenant or new_tenant()
        metering = tail(service.kafka_bootstrap, METERING, service.kafka_security())
        serve = partial(answer, stream=stream)
        driven = asyncio.run(self._drive(service, tenant, workload, serve, answered))
        generated = sum(s.ok and s.cache == CacheStatus.NONE.value for s in driven.samples)
        events = _metering(metering, tenant, generated)
        return WayResult(
            way,
            driven.samples,
            driven.wall_s,
            generations=sum(e.outcome != ErrorCode.SUPERSEDED.value for e in events),
            cost_usd=sum(e.cost_usd for e in events),
            cores=driven.cores,
        )

    def run_gateway(
        self, workload: list[BenchRequest], answered: Answered = lambda: None
    ) -> WayResult:
        """Serve the workload through the stack's front door, over HTTP, streamed."""
        return asyncio.run(_through_the_door(self.door, workload, answered, self._say))

    @property
    def door(self) -> str:
        """The stack's front door, its OpenAI base URL (inside the `with` block)."""
        if not self._door:
            raise RuntimeError("LlmqWay runs inside its `with` block only")
        return self._door

    @property
    def service(self) -> ServiceSettings:
        """How to reach the stack's Kafka and Redis (inside the `with` block)."""
        if self._service is None:
            raise RuntimeError("LlmqWay runs inside its `with` block only")
        return self._service

    @property
    def workers(self) -> list[str]:
        """The /metrics endpoints of the stack's workers (inside the `with` block)."""
        if self._stack is None:
            raise RuntimeError("LlmqWay runs inside its `with` block only")
        stack = self._stack
        return [
            stack.replica(spec, r).endpoint
            for spec in stack.catalog.models
            for r in range(1, self._replicas + 1)
        ]

    @property
    def reply_to(self) -> str:
        """The reply topic of this stack's bench clients."""
        return self._reply_to

    async def _drive(
        self,
        service: ServiceSettings,
        tenant: str,
        workload: list[BenchRequest],
        serve: Callable[[AsyncClient, BenchRequest, float], Awaitable[Reply]],
        answered: Answered,
    ) -> Driven:
        async with AsyncClient(service, tenant=tenant, reply_to=self._reply_to) as client:
            return await drive(workload, partial(serve, client), answered)


def run(
    workload: list[BenchRequest],
    *,
    cache_dir: Path,
    answered: Answered = lambda: None,
    say: Say = lambda _: None,
) -> WayResult:
    """Start the stack, warm it, run the workload once, tear the stack down."""
    with LlmqWay(cache_dir, say) as way:
        return way.run(workload, answered)


def new_tenant() -> str:
    """A tenant of its own for a run, so that it starts with empty caches."""
    return f"bench-{uuid.uuid4().hex[:8]}"


async def answer(
    client: AsyncClient,
    request: BenchRequest,
    sent: float,
    *,
    lane: Lane = LANE,
    stream: bool = True,
) -> Reply:
    """Publish one request and stream its answer; then its result, for the cache and the
    engine's time (the latency ends at the last piece, before it). Unstreamed, the latency
    ends at the result."""
    chat = body(request)
    cid = await client.submit(
        chat.messages,
        lane=lane,
        max_tokens=chat.max_tokens,
        temperature=chat.temperature,
        stream=stream,
    )
    first: float | None = None
    if stream:
        async for piece in client.follow(cid, wait_s=RESULT_TIMEOUT_S):
            if first is None and piece.text:
                first = time.monotonic()
    done = time.monotonic()
    result = await client.result(cid, RESULT_TIMEOUT_S)
    if not stream:
        done = time.monotonic()
    return reply(result, None if first is None else first - sent, done)


def reply(result: InferenceResult, ttft_s: float | None, done_at: float) -> Reply:
    """What the app saw of a result whose first text came `ttft_s` after it sent the
    request; engine time only for a generated (not cached) answer."""
    if result.status != "ok" or result.response is None:
        error = result.error
        reason = "no answer" if error is None else f"{error.code}: {error.message}"
        return Reply(0, 0, None, error=reason)
    usage = result.response.usage
    hit = result.cache is not CacheStatus.NONE
    engine_ms = result.timings.engine_ms
    return Reply(
        usage.prompt_tokens,
        usage.completion_tokens,
        ttft_s,
        engine_s=None if hit or engine_ms is None else engine_ms / 1000,
        cache=result.cache.value,
        done_at=done_at,
    )


async def _through_the_door(
    url: str, workload: list[BenchRequest], answered: Answered, say: Say
) -> WayResult:
    """The front door driven exactly as the vllm-serve way drives vLLM's server, on the
    same lane as the llmq way (a header of llmq's); one warm-up request first."""
    spec = ModelSpec(name=MODEL, engine="openai", url=url, max_inflight=model_spec().max_inflight)
    engine = OpenAIEngine(
        spec,
        retry=RetryPolicy(max_attempts=1),
        headers={"X-Llmq-Lane": LANE.value},
        read_timeout_s=RESULT_TIMEOUT_S,
    )
    try:
        warm = await streamed(engine, BenchRequest(-1, "Say hi.", 8, 0.0), time.monotonic())
        if warm.error is not None:
            raise RuntimeError(f"the front door failed the warm-up request: {warm.error}")
        say(f"{GATEWAY}: warmed up; sending the workload")
        driven = await drive(workload, partial(streamed, engine), answered)
    finally:
        await engine.abort_all()
    return WayResult(GATEWAY, driven.samples, driven.wall_s, cores=driven.cores)


def _metering(consumer: KafkaConsumer, tenant: str, expected: int) -> list[MeteringEvent]:
    """The tenant's metering events: one per generation (they trail the results slightly),
    until `expected` whole ones came; a speculative one the semantic cache answered (cut
    short, SUPERSEDED) costs too but is no generation of an answer."""
    events: list[MeteringEvent] = []
    deadline = time.monotonic() + METERING_WAIT_S
    whole = 0
    try:
        while whole < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    event = MeteringEvent.model_validate_json(record.value)
                    if event.generated and event.tenant == tenant:
                        events.append(event)
                        whole += event.outcome != ErrorCode.SUPERSEDED.value
    finally:
        consumer.close()
    return events
