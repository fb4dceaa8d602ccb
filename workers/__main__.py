"""`python -m workers`: serve one catalog model from Kafka until SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaConnectionError

from llmq import startup
from llmq.deadline import exit_after
from llmq.fetcher import install as fix_fetcher
from llmq.record_limits import RECORD_LIMIT
from llmq.redis_client import bounded_client
from schemas.catalog import ModelSpec
from schemas.errors import LlmqError
from schemas.names import CANCELS, COMPLETIONS, DLQ, METERING, TOKENS, work_topics, worker_group
from schemas.redact import explain, log_content, mask_url
from schemas.retry import RetryPolicy
from workers import metrics
from workers.assignor import LaneAssignor
from workers.breaker import CircuitBreaker
from workers.cancels import Cancellations
from workers.cancels import follow as follow_cancels
from workers.checkpoint import resolve_model_source
from workers.claims import Claims
from workers.engine import Engine
from workers.engine_args import check_names
from workers.openai_engine import OpenAIEngine
from workers.publish import UnsendableRecordError
from workers.settings import WorkerSettings
from workers.starts import RedisStarts
from workers.worker import Worker

log = logging.getLogger("workers")

ASSIGNORS = (LaneAssignor, RoundRobinPartitionAssignor)
"""How the workers' group shares its partitions: workers.assignor, which keeps a member's
partitions (and the generations it parked on them, workers.handover) through a rebalance;
round robin, second, while members that know only it are in the group (a rolling upgrade):
the broker picks a protocol every member offers. LaneAssignor keeps its member's last
numbers on its class, which holds with one group consumer in the process (the
cancellations' is in no group)."""

REJOIN_MARGIN_S = 15.0
"""Time a member has to rejoin its group after its revoked generations are settled."""

STOP_MARGIN_S = 20.0
"""After the drain bound: time to publish what finished, commit, and shut the engine down
(a few seconds with Kafka up). Keep the two under the grace period (90 s in deploy/k8s)."""
SIGNALS_HANDLED_S = 0.05
"""A pause after the engine loaded, for the loop to run the handler of a signal that came
meanwhile (its wake-up takes a few turns of the loop)."""
STUCK = (
    "finished generations could not be published or committed (is Kafka away?); exiting "
    "without committing them, the next worker generates them again"
)


class ServedEngine(Engine, Protocol):
    """An engine as the worker process runs it: what is still open is aborted before
    shutdown (vLLM would hang otherwise; the HTTP engine closes its connections)."""

    async def abort_all(self) -> None:
        """Abort every generation still running."""
        ...


async def serve(
    settings: WorkerSettings,
    spec: ModelSpec,
    make_engine: Callable[[], ServedEngine],
    record_limit: int = RECORD_LIMIT,
    dead_letter_limit: int = RECORD_LIMIT,
) -> None:
    """Start the engine and the Kafka clients (the producer's records up to `record_limit`
    bytes, its dead letters up to `dead_letter_limit`, llmq.dlq's), run the loop, and on
    SIGTERM drain and leave (within LLMQ_DRAIN_TIMEOUT_S and STOP_MARGIN_S, or exit saying
    why). An engine that fails to start is a refusal, in one line (StartError)."""
    stop = asyncio.Event()
    deadline: list[threading.Timer] = []

    def on_signal() -> None:
        stop.set()
        if not deadline:
            deadline.append(exit_after(settings.drain_timeout_s + STOP_MARGIN_S, STUCK))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        engine = make_engine()
    except Exception as exc:  # vLLM logged its own reason (the KV cache does not fit) first
        log.debug("the engine failed to start", exc_info=True)  # where, if the bug is ours
        what = explain(exc)
        why = f"model {spec.name}: the engine failed to start: {what} (its reason is logged above)"
        raise startup.StartError(why, startup.UNREACHABLE) from None
    # A SIGTERM that came while the model loaded (the loop was blocked) is handled now: such
    # a worker never joins its group (a join and a leave, two rebalances for nothing).
    await asyncio.sleep(SIGNALS_HANDLED_S)
    if stop.is_set():
        await engine.abort_all()
        engine.shutdown()
        log.info("worker %s stopped while its engine started", settings.worker_id)
        return
    producer, consumer = kafka_clients(settings, spec, record_limit)
    cancels = cancels_consumer(settings)
    cancellations = Cancellations(settings.cancel_memory_s)
    redis = bounded_client(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    worker = Worker(
        spec,
        engine,
        consumer,
        producer,
        worker_id=settings.worker_id,
        commit_interval_s=settings.commit_interval_s,
        drain_timeout_s=settings.drain_timeout_s,
        lanes=settings.lane_policy(),
        starts=RedisStarts(redis),
        max_starts=settings.max_starts,
        cancellations=cancellations,
        deltas=settings.delta_policy(),
        claim=Claims(redis).first,
        record_limit=record_limit,
        dead_letter_limit=dead_letter_limit,
    )
    following: asyncio.Task[None] | None = None
    try:
        await producer.start()
        await cancels.start()
        following = asyncio.create_task(follow_cancels(cancels, cancellations))
        consumer.subscribe(work_topics(spec.name), listener=worker.rebalance_listener())
        await consumer.start()
        metrics.MAX_IN_FLIGHT.set(spec.max_inflight)
        metrics.READY.set(1)
        log.info(
            "worker %s serving %s from %s", settings.worker_id, spec.name, work_topics(spec.name)
        )
        await worker.run(stop)
    finally:
        metrics.READY.set(0)
        if following is not None:
            following.cancel()
        await engine.abort_all()
        await consumer.stop()
        await cancels.stop()
        await producer.stop()
        await redis.aclose()
        engine.shutdown()
    log.info("worker %s stopped", settings.worker_id)


def topics(spec: ModelSpec) -> list[str]:
    """Every topic a worker of `spec` reads or writes: `llmq topics --create` makes them, with
    the plan's partition counts (a client naming a missing one would have the broker make it
    with its own defaults)."""
    return [*work_topics(spec.name), CANCELS, COMPLETIONS, METERING, TOKENS, DLQ]


def kafka_clients(
    settings: WorkerSettings, spec: ModelSpec, record_limit: int = RECORD_LIMIT
) -> tuple[AIOKafkaProducer, AIOKafkaConsumer]:
    """The worker's producer and consumer (not started yet), secured as the settings say. The
    producer refuses a record past `record_limit` itself (MessageSizeTooLargeError from its
    send): refused by the broker, it would break the producer's sequence on that partition."""
    security = settings.kafka_security()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=settings.worker_id,
        acks="all",
        enable_idempotence=True,
        max_request_size=record_limit,
        # No linger: a quiet worker's completion leaves at once (with 5 ms of it, the step
        # from the worker's send to the result took p50 14-15 ms, without 7-8:
        # tools.bench.hops). Busy, records still share batches: aiokafka has one request
        # in flight per broker and batches what is sent meanwhile.
        linger_ms=0,
        **security.client_kwargs(),
    )
    fix_fetcher()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=worker_group(spec.name),
        client_id=settings.worker_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
        # A member that is losing partitions first lets their generations finish (up to the
        # drain bound); the group must wait that long for it to rejoin, or it is dropped,
        # rejoins, and the next rebalance starts over: a storm that serves nothing.
        rebalance_timeout_ms=int((settings.drain_timeout_s + REJOIN_MARGIN_S) * 1000),
        partition_assignment_strategy=ASSIGNORS,
        **security.client_kwargs(),
    )
    return producer, consumer


def cancels_consumer(settings: WorkerSettings) -> AIOKafkaConsumer:
    """A reader of every partition of llmq.cancels, in no group (each worker reads all)."""
    fix_fetcher()
    return AIOKafkaConsumer(
        CANCELS,
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.worker_id}-cancels",
        group_id=None,
        enable_auto_commit=False,
        **settings.kafka_security().client_kwargs(),
    )


def main() -> int:
    """Validate settings and the model and reach Kafka before the engine starts; the exit code
    (a refusal to start is one line: llmq.startup)."""
    return startup.run(_serve, log, "the worker")


def _serve() -> int:
    settings = startup.read_settings(WorkerSettings)
    startup.log_to_stderr(settings.log_level)
    log_content(settings.log_content)
    catalog = startup.configured(settings.catalog)
    name = settings.model or catalog.default
    spec = catalog.get(name)
    if spec is None:
        why = f"LLMQ_MODEL={name} is not in the catalog; it has {catalog.names}"
        raise startup.StartError(why, startup.CONFIGURATION)
    try:
        make_engine = engine_factory(settings, spec)
    except (ValueError, FileNotFoundError) as exc:  # each names the model
        raise startup.StartError(str(exc), startup.CONFIGURATION) from None
    startup.serve_metrics(settings)
    limits = startup.reach_kafka(
        settings, settings.worker_id, limits_of=(COMPLETIONS, DLQ), needs=topics(spec)
    )
    try:
        asyncio.run(serve(settings, spec, make_engine, limits[COMPLETIONS], limits[DLQ]))
    except KafkaConnectionError as exc:  # gone while the engine started, or later
        log.error("the worker stopped: %s", startup.kafka_unreachable(settings, exc))
        return startup.UNREACHABLE
    except (UnsendableRecordError, LlmqError) as exc:  # LlmqError: its engine died
        log.error("the worker stopped: %s", exc)
        return startup.UNREACHABLE
    return 0


def engine_factory(settings: WorkerSettings, spec: ModelSpec) -> Callable[[], ServedEngine]:
    """What builds the model's engine, once all it needs is checked (ValueError or
    FileNotFoundError name the model and what is missing): "vllm" checks its engine_args
    and resolves the checkpoint now, "openai" checks its URL and API key now; neither engine
    starts yet."""
    if spec.engine == "openai":
        engine = OpenAIEngine(
            spec,
            api_key=settings.api_key(spec),
            send_priority=spec.send_priority,
            retry=RetryPolicy(max_attempts=spec.retry_attempts, budget_s=spec.retry_budget_s),
            breaker=CircuitBreaker(
                spec.name,
                failure_threshold=spec.breaker_failures,
                cooldown_s=spec.breaker_cooldown_s,
            ),
        )
        where = mask_url(spec.url or "")
        log.info("model %s is served by the OpenAI-compatible server at %s", spec.name, where)
        return lambda: engine
    if spec.source is None:
        raise ValueError(f"model {spec.name!r}: engine 'vllm' needs a `source`")
    os.environ.update(settings.engine_env())
    # torch and vLLM: "vllm" only
    from vllm import __version__ as vllm_version  # noqa: PLC0415
    from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: PLC0415

    from workers.vllm_engine import VllmEngine, engine_args  # noqa: PLC0415

    # Every wrong name at once, before a checkpoint is built for nothing.
    check_names(spec, {field.name for field in dataclasses.fields(AsyncEngineArgs)}, vllm_version)
    try:
        checkpoint = resolve_model_source(spec.source, settings.cache_dir / "models")
    except (ValueError, FileNotFoundError) as exc:
        raise type(exc)(f"model {spec.name!r}: {exc}") from exc
    args = engine_args(spec, checkpoint, settings.gpu_memory_utilization)
    shared = settings.prefix_cache_scope == "shared"
    return partial(VllmEngine, spec, args, settings.engine_nice, shared_prefixes=shared)


if __name__ == "__main__":
    sys.exit(main())
