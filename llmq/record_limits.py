"""The most bytes Kafka takes as one record on a topic: its max.message.bytes, at most what a
producer sends by default. A producer given it refuses a larger record itself, before
sending; one the broker refuses leaves an idempotent producer unable to write that
partition again (aiokafka) or anything (kafka-python)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code

from schemas.redact import explain
from schemas.settings import ServiceSettings

RECORD_LIMIT = 1_048_576
"""The most bytes a producer sends as one record where its topic takes more (aiokafka's
default max_request_size)."""
BATCH_BYTES = 16_384
"""The most bytes a producer batches for one partition (aiokafka's and kafka-python's
default): under a lower limit, the limit (the broker refuses a batch whole)."""
REREAD_S = 5.0
"""How often, at most, a client reads a topic's limit again to see whether a record past the
one it read fits now (the limit raised again)."""
READ_WAIT_S = 10.0
"""How long a client waits for the brokers to say a topic's limit."""

log = logging.getLogger(__name__)


async def record_limit(admin: AIOKafkaAdminClient, topic: str, wait_s: float = 30.0) -> int:
    """`topic`'s max.message.bytes, at most RECORD_LIMIT; RECORD_LIMIT, with a warning,
    where the brokers will not say (no such topic yet, or no right to describe it)."""
    wanted = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})
    try:
        async with asyncio.timeout(wait_s):
            [response] = await admin.describe_configs([wanted])
        [(code, _, _, _, entries)] = response.resources
        if code:
            raise for_code(code)()
        [(_, value, *_)] = entries
        return min(int(value), RECORD_LIMIT)
    except (KafkaError, OSError, TimeoutError, ValueError) as exc:
        why = str(exc) if isinstance(exc, KafkaError) else explain(exc)
        log.warning("cannot read %s's max.message.bytes (%s); taking %d", topic, why, RECORD_LIMIT)
        return RECORD_LIMIT


async def read_record_limit(settings: ServiceSettings, client_id: str, topic: str) -> int:
    """`topic`'s limit (record_limit), asked by an admin client of its own; RECORD_LIMIT,
    with a warning, where the brokers do not answer in READ_WAIT_S (the client's own
    connection then says why)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{client_id}-limits",
        **settings.kafka_security().client_kwargs(),
    )
    try:
        async with asyncio.timeout(READ_WAIT_S):
            await admin.start()
        return await record_limit(admin, topic, READ_WAIT_S)
    except (KafkaError, OSError, TimeoutError) as exc:
        why = str(exc) if isinstance(exc, KafkaError) else explain(exc)
        log.warning("cannot read %s's max.message.bytes (%s); taking %d", topic, why, RECORD_LIMIT)
        return RECORD_LIMIT
    finally:
        await admin.close()


def read_record_limit_blocking(settings: ServiceSettings, client_id: str, topic: str) -> int:
    """read_record_limit from synchronous code, on a thread and loop of its own (so whether
    the caller runs a loop does not matter)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, read_record_limit(settings, client_id, topic)).result()
