"""`python -m streams`: run one stream-processor instance until SIGTERM."""

from __future__ import annotations

import logging
import sys
from functools import partial
from typing import Any

from aiokafka.errors import KafkaError

from llmq import startup
from schemas.catalog import Catalog
from schemas.names import (
    ALERTS,
    CANCELS,
    COMPLETIONS,
    DLQ,
    METERING,
    REQUESTS,
    REQUESTS_KEYED,
    RESULTS,
    TOKENS,
    changelog_topic,
    work_topics,
)
from schemas.redact import log_content
from schemas.tenants import TenantPolicy
from streams.app import build
from streams.settings import StreamSettings
from streams.stopping import BoundedWorker

log = logging.getLogger("streams")


def main() -> int:
    """Validate settings, serve /metrics, reach Kafka, hand the loop to faust (which drains on
    SIGTERM, within LLMQ_DRAIN_TIMEOUT_S); the exit code (a refusal to start is one line:
    llmq.startup)."""
    return startup.run(_serve, log, "the stream processor")


def _serve() -> int:
    settings = startup.read_settings(StreamSettings)
    # A bad models or tenants file, or Kafka away, fails here, in one line: not in an agent,
    # not after the embedder loaded, not in faust's traceback.
    catalog = startup.configured(settings.catalog)
    startup.configured(partial(TenantPolicy.load, settings.tenants_file))
    startup.serve_metrics(settings)
    # The coalescing table's topics: faust would stop at their first record, in a traceback.
    keyed = (REQUESTS_KEYED, COMPLETIONS, changelog_topic(settings.app_id))
    partitioned = dict.fromkeys(keyed, settings.partitions)
    startup.reach_kafka(settings, settings.app_id, partitioned=partitioned, needs=topics(catalog))
    log.setLevel(settings.log_level)
    # faust sets up logging when its Worker starts: until then, what building the app says
    # (which semantic-cache guard, which precision) needs a handler of its own.
    early = logging.StreamHandler()
    early.setFormatter(logging.Formatter(startup.LOG_FORMAT))
    log.addHandler(early)
    try:
        app = build(settings)
    finally:
        log.removeHandler(early)
    log_content(settings.log_content)
    worker = StreamWorker(
        app, settings, drain_timeout_s=settings.drain_timeout_s, loglevel=settings.log_level
    )
    try:
        worker.execute_from_commandline()
    except SystemExit:
        if worker.refusal is not None:
            raise worker.refusal from None
        raise


def topics(catalog: Catalog) -> list[str]:
    """Every llmq topic the stream processor reads or writes, which `llmq topics --create`
    makes with the plan's partition counts and replicas: a missing one would be made as an
    agent subscribes (the broker's default count) or as faust first sends to it
    (LLMQ_PARTITIONS, llmq.dlq's too), and the topics Job would then refuse it. faust's own
    topics (its table's changelog) and apps' reply topics are made as they are needed."""
    read = [REQUESTS, REQUESTS_KEYED, COMPLETIONS, METERING]
    work = [topic for model in catalog.names for topic in work_topics(model)]
    return [*read, *work, RESULTS, TOKENS, CANCELS, ALERTS, DLQ]


class StreamWorker(BoundedWorker):
    """A BoundedWorker whose start failing on Kafka (lost or hung since reach_kafka) is a
    refusal in one line, not faust's traceback."""

    def __init__(self, app: Any, settings: StreamSettings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.settings = settings
        self.refusal: startup.StartError | None = None

    async def start(self) -> None:
        """Start, then run until stopped. A KafkaError out of it comes from the start: once
        running, faust retries, or crashes the app and this returns when it has stopped."""
        try:
            await super().start()
        except KafkaError as exc:  # kept for _serve: faust would log it with its traceback
            self.refusal = startup.kafka_failed(self.settings, exc)


if __name__ == "__main__":
    sys.exit(main())
