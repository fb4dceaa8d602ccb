"""Way "llmq": requests published to Kafka, results collected by correlation id, through a
local stack of its own (Kafka, Redis, the stream processor, one vLLM worker).

Without token streaming the app sees no first token, so the TTFT reported is an estimate
from the app's side: the latency minus the worker's generation after its first token
(timings.engine_ms - timings.ttft_ms), i.e. when the first token would have reached the
app had it travelled like the whole answer. A cached answer arrives whole: its TTFT is its
latency.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import TracebackType

from kafka import KafkaConsumer

from llmq.client import Client, tail
from schemas.metering import MeteringEvent
from schemas.names import METERING, TopicSpec
from schemas.result import CacheStatus, InferenceResult
from schemas.settings import ServiceSettings
from tools.bench.samples import BenchRequest, WayResult
from tools.bench.ways import LANE, Answered, Reply, Say, body, drive, set_engine_env
from tools.stack.ports import free_block
from tools.stack.settings import LocalSettings
from tools.stack.stack import LocalStack
from tools.topics import ensure_topics

WAY = "llmq"
STACK_PORTS = 5
"""Kafka, its controller, Redis, the stream processor's and the worker's /metrics."""
RESULT_TIMEOUT_S = 900.0
METERING_WAIT_S = 15.0
"""How long metering events may trail the last result."""


class LlmqWay:
    """The local stack on free ports with a temporary state dir: up (and warmed with one
    request) on enter, down on exit. Each run is a fresh tenant, so caches start empty."""

    def __init__(self, cache_dir: Path, say: Say = lambda _: None) -> None:
        self._cache_dir = cache_dir
        self._say = say
        self._state: tempfile.TemporaryDirectory[str] | None = None
        self._stack: LocalStack | None = None
        self._client: Client | None = None

    def __enter__(self) -> LlmqWay:
        set_engine_env()
        self._state = tempfile.TemporaryDirectory(prefix="llmq-bench-stack-")
        base = free_block(STACK_PORTS)
        local = LocalSettings(
            state_dir=Path(self._state.name),
            cache_dir=self._cache_dir,
            kafka_port=base,
            redis_port=base + 2,
            metrics_base_port=base + 3,
            models_file=None,
            tenants_file=None,
            compress_prompts=False,
        )
        self._stack = LocalStack(local)
        self._say(f"{WAY}: starting the local stack (Kafka on port {base})")
        try:
            self._stack.up(say=lambda line: self._say(f"{WAY}: {line}"))
            service = ServiceSettings(
                kafka_bootstrap=local.kafka_bootstrap, redis_url=local.redis_url
            )
            reply_to = f"bench.replies.{uuid.uuid4().hex[:12]}"
            ensure_topics(service.kafka_bootstrap, [TopicSpec(reply_to, 1)])
            self._client = Client(service, reply_to=reply_to)
            # The whole path, caches included (a miss: the stack and its tenant are new).
            warm = self._client.ask(
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
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._stack is not None:
            self._stack.down(say=lambda _: None)
            self._stack = None
        if self._state is not None:
            self._state.cleanup()
            self._state = None

    def run(
        self, workload: list[BenchRequest], answered: Answered = lambda: None, way: str = WAY
    ) -> WayResult:
        """Serve the workload as a fresh tenant, recorded under `way`; generations and cost
        are the tenant's metering events."""
        if self._client is None:
            raise RuntimeError("LlmqWay.run outside its `with` block")
        tenant = f"bench-{uuid.uuid4().hex[:8]}"
        service = self._client.settings
        metering = tail(service.kafka_bootstrap, METERING, service.kafka_security())
        with ThreadPoolExecutor(max(1, len(workload)), thread_name_prefix="llmq-bench") as pool:
            answer = partial(_answer, self._client, pool, tenant)
            samples, wall_s = asyncio.run(drive(workload, answer, answered))
        generated = sum(s.ok and s.cache == CacheStatus.NONE.value for s in samples)
        events = _metering(metering, tenant, generated)
        return WayResult(
            way,
            samples,
            wall_s,
            generations=len(events),
            cost_usd=sum(e.cost_usd for e in events),
        )


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


async def _answer(
    client: Client, pool: ThreadPoolExecutor, tenant: str, request: BenchRequest, sent: float
) -> Reply:
    """Publish one request and wait for its result; a thread each (the client blocks)."""
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(pool, _ask, client, tenant, request)
    return reply(result, time.monotonic() - sent)


def reply(result: InferenceResult, latency_s: float) -> Reply:
    """What the app saw of a result `latency_s` after sending its request; TTFT estimated
    as the module says, engine time only for a generated (not cached) answer."""
    if result.status != "ok" or result.response is None:
        error = result.error
        reason = "no answer" if error is None else f"{error.code}: {error.message}"
        return Reply(0, 0, None, error=reason)
    usage = result.response.usage
    t = result.timings
    hit = result.cache is not CacheStatus.NONE
    ttft = latency_s
    if not hit and t.engine_ms is not None and t.ttft_ms is not None:
        ttft = latency_s - (t.engine_ms - t.ttft_ms) / 1000
    return Reply(
        usage.prompt_tokens,
        usage.completion_tokens,
        ttft,
        engine_s=None if hit or t.engine_ms is None else t.engine_ms / 1000,
        cache=result.cache.value,
    )


def _ask(client: Client, tenant: str, request: BenchRequest) -> InferenceResult:
    chat = body(request)
    cid = client.submit(
        chat.messages,
        tenant=tenant,
        lane=LANE,
        max_tokens=chat.max_tokens,
        temperature=chat.temperature,
    )
    return client.result(cid, timeout=RESULT_TIMEOUT_S)


def _metering(consumer: KafkaConsumer, tenant: str, expected: int) -> list[MeteringEvent]:
    """The tenant's metering events: one per generation (they trail the results slightly)."""
    events: list[MeteringEvent] = []
    deadline = time.monotonic() + METERING_WAIT_S
    try:
        while len(events) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    event = MeteringEvent.model_validate_json(record.value)
                    if event.tenant == tenant:
                        events.append(event)
    finally:
        consumer.close()
    return events
