"""The faust app: the Processor wired to llmq.requests and llmq.completions."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import faust
import redis.asyncio as aioredis

from schemas.topics import COMPLETIONS, REQUESTS
from streams import metrics
from streams.processor import Processor
from streams.settings import StreamSettings
from streams.store import RedisStore

ACK_TIMEOUT_S = 30.0


class FaustSend:
    """Publishes through faust's producer and waits for the broker's acknowledgement.

    faust acks an event when its agent moves to the next one, so waiting here means an
    offset is committed only after what the event produced is safely in Kafka.
    """

    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._topics: dict[str, Any] = {}

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        channel = self._topics.get(topic)
        if channel is None:
            # Declared once, up front: sending to a topic the broker auto-creates can
            # stall faust's producer for every concurrent actor.
            channel = self._app.topic(topic, key_serializer="raw", value_serializer="raw")
            await channel.maybe_declare()
            self._topics[topic] = channel
        pending = await channel.send(key=key, value=value, headers=dict(headers or {}))
        await asyncio.wait_for(pending, timeout=ACK_TIMEOUT_S)


def build(settings: StreamSettings) -> faust.App:
    """The app with both agents; run it with faust's Worker."""
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_request_timeout=ACK_TIMEOUT_S,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        web_enabled=False,
        datadir=str(settings.data_dir),
    )
    store = RedisStore(
        aioredis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2),
        cache_ttl_s=settings.cache_ttl_s,
        result_ttl_s=settings.result_ttl_s,
    )
    processor = Processor(settings.catalog(), store, FaustSend(app))
    requests = app.topic(REQUESTS, key_serializer="raw", value_serializer="raw")
    completions = app.topic(COMPLETIONS, key_serializer="raw", value_serializer="raw")

    async def admit(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await processor.on_request(event.key, event.value)

    async def complete(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await processor.on_completion(event.value)

    async def ready() -> None:
        metrics.READY.set(1)

    app.agent(requests, name="llmq.admit", concurrency=settings.concurrency)(admit)
    app.agent(completions, name="llmq.complete", concurrency=settings.concurrency)(complete)
    app.task(ready)
    return app
