"""The faust app: admission, dedupe and completion wired to their topics and the table."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import faust
import redis.asyncio as aioredis
from aiokafka.errors import KafkaError
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducerDriver
from faust.types import TP
from faust.types.auth import CredentialsT
from prometheus_client import disable_created_metrics

from llmq.fetcher import install as fix_fetcher
from llmq.futures import read_outcome
from llmq.pipelined import Pipelined
from llmq.record_limits import BATCH_BYTES, RECORD_LIMIT, read_record_limit
from llmq.redis_client import bounded_client
from llmq.serving import Serving
from schemas.kafka_security import KafkaSecurity
from schemas.names import (
    AGENT_ADMIT,
    AGENT_COMPLETE,
    AGENT_DEDUPE,
    AGENT_METER,
    COMPLETIONS,
    INFLIGHT_TABLE,
    METERING,
    REQUESTS,
    REQUESTS_KEYED,
)
from schemas.tenants import TenantPolicy
from streams import metrics
from streams.actors import install as fix_actors
from streams.affinity import PrefixAffinity, uncached
from streams.ahead import EmbedAhead
from streams.budget import Budgets
from streams.budget_alerts import BudgetAlerts
from streams.coalesce import Coalescer
from streams.compress import compress
from streams.experiment_stats import ExperimentStats
from streams.gate import TenantGate
from streams.limits import TopicLimits
from streams.meter import Meter
from streams.offsets import Tails
from streams.offsets import install as fix_offsets
from streams.outbox import Answered, Outbox
from streams.ratelimit import RateLimiter
from streams.redis_epoch import LOOK_S, RedisEpoch
from streams.resend import ACK_TIMEOUT_S
from streams.rollups import CostRollups
from streams.savings import Savings
from streams.semantic import SemanticCache, additions_from
from streams.settings import StreamSettings
from streams.stages import build_stages
from streams.store import RedisStore
from streams.tenant_labels import TenantLabels

COMMIT_INTERVAL_S = 1.0
WATCH_AGAIN_S = 10.0
"""How long the stream processor waits to connect again when it cannot watch the workers'
consumer groups (Serving)."""
STREAM_BUFFER = 256
"""Records faust queues for each agent's stream (stream_buffer_maxsize, by default 4,096); at
four fifths of it, it stops fetching that partition. The agents take a record at a time per
partition, admission LLMQ_CONCURRENCY at a time, so a deep prefetch buys nothing: 4,096 held
about 160 MB a partition with 50 KB prompts."""

Handler = Callable[[bytes | None, bytes | None], Awaitable[None]]
"""An agent's handler of one record's key and value (None: a tombstone)."""

log = logging.getLogger(__name__)


class FaustSend:
    """Publishes through faust's producer and waits for the broker's acknowledgement.

    faust acks an event when its agent moves to the next one, so waiting here means an
    offset is committed only after what the event produced is safely in Kafka. A record past
    what its topic takes raises RecordRefusedError (see TopicLimits).
    """

    def __init__(self, app: faust.App, limits: TopicLimits) -> None:
        self._app = app
        self._limits = limits
        self._topics: dict[str, Any] = {}
        self._queueing: defaultdict[tuple[str, int], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
        partition: int | None = None,
    ) -> None:
        channel = await self._channel(topic)
        sent_headers = dict(headers or {})

        async def once(alone: bool) -> None:
            if alone:
                await self._alone(topic, key, value, sent_headers, partition)
                return
            # Topic.send as faust writes it (stream_publish_on_commit is off), keeping the
            # message faust fails beside the send's own future, to read its failure.
            message = channel.as_future_message(
                key=key, value=value, partition=partition, headers=sent_headers
            )
            message.add_done_callback(read_outcome)
            pending = await channel.publish_message(message)
            await asyncio.wait_for(pending, timeout=ACK_TIMEOUT_S)

        await self._limits.send(topic, key, value, sent_headers, once)

    async def _alone(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes],
        partition: int | None,
    ) -> None:
        """Send one record in a batch of its own, where the key's partition is."""
        producer = await self._producer(topic)
        if partition is None:  # where faust would put it; a keyless record: the first
            partition = 0 if key is None else self._app.producer.key_partition(topic, key).partition
        batch = producer.create_batch()
        batch.append(key=key, value=value, timestamp=None, headers=list(headers.items()))
        batch.close()  # an open batch takes the records sent after it
        # One queued at a time per partition: aiokafka waits for the batch before to drain,
        # and a crowd of waiters runs out its time.
        async with self._queueing[(topic, partition)]:
            pending = await producer.send_batch(batch, topic, partition=partition)
        await asyncio.wait_for(pending, timeout=ACK_TIMEOUT_S)

    async def partitions(self, topic: str) -> int:
        """How many partitions `topic` has, from the producer's metadata (fetched once, then
        kept fresh by the client). faust tells partition counts only of topics it consumes,
        so this asks its aiokafka producer."""
        return len(await (await self._producer(topic)).partitions_for(topic))

    async def _producer(self, topic: str) -> Any:
        """faust's aiokafka producer, with `topic` declared and its partitions known."""
        await self._channel(topic)
        driver = self._app.producer
        if not isinstance(driver, AIOKafkaProducerDriver):
            raise TypeError(f"faust's producer is {type(driver).__name__}, not aiokafka's")
        producer = driver._ensure_producer()
        await producer.partitions_for(topic)
        return producer

    async def _channel(self, topic: str) -> Any:
        channel = self._topics.get(topic)
        if channel is None:
            # Declared once, up front: sending to a topic the broker auto-creates can
            # stall faust's producer for every concurrent actor.
            channel = self._app.topic(topic, key_serializer="raw", value_serializer="raw")
            await channel.maybe_declare()
            self._topics[topic] = channel
        return channel


def broker_credentials(security: KafkaSecurity) -> CredentialsT | None:
    """faust's form of the Kafka security settings (None: plaintext); faust hands them to
    each of its consumers, producers and topic-creating clients."""
    if security.sasl:
        return faust.SASLCredentials(
            username=security.username,
            password=security.password.get_secret_value() if security.password else None,
            ssl_context=security.ssl_context(),
            mechanism=security.mechanism.value,
        )
    if security.tls:
        return faust.SSLCredentials(security.ssl_context())
    return None


def watched(app: faust.App, settings: StreamSettings) -> Serving:
    """Which models have workers (llmq.serving), asked before work is handed on to another
    model. Its client starts with the app in the background, tried again until it connects:
    until then (Kafka's admin API slow or away) every model counts as served, and nothing
    waits on it. It closes as the app stops."""
    serving = Serving(settings, settings.app_id)

    async def start() -> None:
        while True:
            try:
                await serving.start()
                return
            except (KafkaError, OSError) as exc:
                log.warning("cannot watch the workers' groups yet: %r", exc)
                await asyncio.sleep(WATCH_AGAIN_S)

    async def close(*sender_and_signal: object, **kwargs: object) -> None:
        await serving.close()

    app.task(start)
    app.on_before_shutdown.connect(close)
    return serving


def watch_for_loss(app: faust.App, client: aioredis.Redis) -> None:
    """Look whether Redis lost its data every LOOK_S (RedisEpoch), and once at start: that
    first look only learns the token, so the sooner it comes the less goes unseen."""
    epoch = RedisEpoch(client)
    app.task(epoch.look)
    app.timer(LOOK_S)(epoch.look)


def _fix_faust() -> None:
    """faust-streaming 0.15.3's offsets, fetcher and actors, as llmq needs them."""
    fix_offsets()
    fix_fetcher()
    fix_actors()


def build(settings: StreamSettings) -> faust.App:
    """The app with its agents; run it with faust's Worker."""
    _fix_faust()
    # No X_created sample beside each counter's and histogram's: they would double what
    # Prometheus keeps of the per-tenant cost counters, and no rule or panel reads them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(settings.kafka_security()),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=RECORD_LIMIT,  # as the clients' (faust's own: 1,000,000)
        producer_max_batch_size=BATCH_BYTES,  # TopicLimits sends alone under a limit below it
        producer_request_timeout=ACK_TIMEOUT_S,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=COMMIT_INTERVAL_S,
        stream_buffer_maxsize=STREAM_BUFFER,
        web_enabled=False,
        datadir=str(settings.data_dir),
    )
    redis = bounded_client(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    pipelined = Pipelined(redis)  # a cache hit's commands, sent with those of its turn
    store = RedisStore(pipelined, settings.cache_ttl_s, settings.result_ttl_s)
    catalog = settings.catalog()
    send = FaustSend(app, TopicLimits(partial(read_record_limit, settings, settings.app_id)))
    policy = TenantPolicy.load(settings.tenants_file)
    labels = TenantLabels.of(policy, settings.metrics_tenants)
    alerts = BudgetAlerts(redis, send, labels)
    gate = TenantGate(policy, RateLimiter(redis), Budgets(redis), catalog, alerts)
    answered: list[Answered] = [Savings(catalog, send), ExperimentStats(redis)]
    affinity = settings.prefix_affinity_chars
    # The models whose engines salt their prefix cache per tenant (workers/__main__.py).
    per_tenant = settings.prefix_cache_scope == "tenant"
    salted = frozenset(m.name for m in catalog.models if per_tenant and m.engine == "vllm")
    placer = (  # the models without a prefix cache (uncached) are placed by fingerprint
        PrefixAffinity(affinity, send.partitions, salted, uncached(catalog.models))
        if affinity
        else None
    )
    outbox = Outbox(store, send, ledger=gate, answered=answered, placer=placer)
    meter = Meter(gate, CostRollups(pipelined, labels), outbox)
    # The coalescing state: changelog-backed, co-partitioned with llmq.requests.keyed and
    # llmq.completions (all keyed by fingerprint, all with `partitions` partitions).
    table = app.Table(
        INFLIGHT_TABLE,
        partitions=settings.partitions,
        key_type=bytes,  # bytes keys and values travel raw
        value_type=bytes,
    )
    coalescer = Coalescer(table, settings.coalesce_stale_s)
    similar: SemanticCache | None = None
    if settings.semantic_cache:
        from streams.embedder import Embedder  # noqa: PLC0415 -- torch: only for this cache

        lenient = additions_from(settings.semantic_max_false_hit_rate)
        similar = SemanticCache(
            redis,
            Embedder(),
            settings.semantic_threshold,
            settings.semantic_max_entries,
            max_mirrored=settings.semantic_max_mirrored,
            lookup_timeout_s=settings.semantic_lookup_timeout_s,
            ttl_s=settings.cache_ttl_s,
            additions_from=lenient,
        )
        log.info(
            "semantic cache: the %s guard (LLMQ_SEMANTIC_MAX_FALSE_HIT_RATE=%s)",
            "strict" if math.isinf(lenient) else "lenient",
            settings.semantic_max_false_hit_rate,
        )

    def assigned() -> set[TP]:
        # Asked at each request: app.consumer is made when the app starts, not before.
        return app.consumer.assignment()

    ahead = None if similar is None else EmbedAhead(catalog, similar, assigned, settings.partitions)
    stages = build_stages(
        catalog,
        outbox,
        coalescer,
        settings.retry_policy(),
        similar=similar,
        gate=gate,
        compress=compress if settings.compress_prompts else None,
        ahead=ahead,
        served=watched(app, settings),
    )

    def agent(topic: str, name: str, concurrency: int, handle: Handler) -> None:
        """concurrency 0: one actor per assigned partition, each in its partition's order."""
        source = app.topic(topic, key_serializer="raw", value_serializer="raw")

        async def run(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                await handle(event.key, event.value)

        isolated = concurrency == 0
        app.agent(source, name=name, concurrency=max(1, concurrency), isolated_partitions=isolated)(
            run
        )

    agent(REQUESTS, AGENT_ADMIT, settings.concurrency, stages.admission.on_request)
    # These two write the coalescing table, which faust allows only in order: one actor per
    # partition. Copies of a request share a partition, so they always meet in one actor.
    agent(REQUESTS_KEYED, AGENT_DEDUPE, 0, stages.dedupe.on_keyed)
    agent(COMPLETIONS, AGENT_COMPLETE, 0, stages.complete.on_completion)
    agent(METERING, AGENT_METER, settings.concurrency, meter.on_metering)

    async def ready() -> None:
        metrics.READY.set(1)

    app.task(ready)
    tails = Tails()

    async def reread_tails() -> None:
        await tails.check(app.consumer)

    app.timer(COMMIT_INTERVAL_S)(reread_tails)
    watch_for_loss(app, redis)
    return app
