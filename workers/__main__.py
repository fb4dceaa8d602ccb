"""`python -m workers`: serve one catalog model from Kafka until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from prometheus_client import start_http_server

from schemas.catalog import ModelSpec
from schemas.topics import work_topics
from workers import metrics
from workers.checkpoint import resolve_model_source
from workers.settings import WorkerSettings
from workers.vllm_engine import VllmEngine
from workers.worker import Worker

log = logging.getLogger("workers")


async def serve(settings: WorkerSettings, spec: ModelSpec, checkpoint: Path) -> None:
    """Start the engine and the Kafka clients, run the loop, and on SIGTERM drain and leave."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine = VllmEngine(spec, checkpoint, settings.gpu_memory_utilization)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=settings.worker_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"llmq.workers.{spec.name}",
        client_id=settings.worker_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )
    worker = Worker(
        spec,
        engine,
        consumer,
        producer,
        worker_id=settings.worker_id,
        commit_interval_s=settings.commit_interval_s,
        drain_timeout_s=settings.drain_timeout_s,
    )
    try:
        await producer.start()
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
        await engine.abort_all()
        await consumer.stop()
        await producer.stop()
        engine.shutdown()
    log.info("worker %s stopped", settings.worker_id)


def main() -> int:
    """Validate settings and the model before anything starts; exit non-zero with a reason."""
    settings = WorkerSettings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    catalog = settings.catalog()
    name = settings.model or catalog.default
    spec = catalog.get(name)
    if spec is None:
        log.error("LLMQ_MODEL=%s is not in the catalog; it has %s", name, catalog.names)
        return 2
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if spec.source is None:
        log.error("model %s has engine %r, which this worker cannot serve yet", name, spec.engine)
        return 2
    checkpoint = resolve_model_source(spec.source, settings.cache_dir / "models")
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    try:
        asyncio.run(serve(settings, spec, checkpoint))
    except KafkaConnectionError as exc:
        log.error("cannot reach Kafka at %s: %s", settings.kafka_bootstrap, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
