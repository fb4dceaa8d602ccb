"""The most bytes Kafka takes as one record on a topic: its max.message.bytes, at most what a
producer sends by default. A producer given it refuses a larger record itself, before
sending; one the broker refuses leaves an idempotent producer unable to write that
partition again (aiokafka) or anything (kafka-python)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from schemas.dlq import DeadLetter, dead_letter
from schemas.errors import LlmqError
from schemas.redact import explain
from schemas.request import RecordRefusedError
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
_CUT_MARGIN = 64
"""Bytes kept free when a dead letter's value is cut to fit: the header naming its original
length, and the longer varints of a longer value."""

log = logging.getLogger(__name__)


def record_size(key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] = ()) -> int:
    """A record's size as a producer reckons it against its max_request_size."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers)))


def dead_letter_within(
    source: str, key: bytes | None, raw: bytes | None, error: LlmqError, limit: int
) -> DeadLetter:
    """dead_letter, its value cut to what a record of `limit` bytes holds beside its key and
    headers."""
    letter = dead_letter(source, key, raw, error)
    room = limit - record_size(letter.key, b"", list(letter.headers.items())) - _CUT_MARGIN
    if len(letter.value) > room:
        letter = dead_letter(source, key, raw, error, room)
    return letter


async def record_limit(admin: AIOKafkaAdminClient, topic: str) -> int | None:
    """`topic`'s max.message.bytes, at most RECORD_LIMIT; None, with a warning, where the
    brokers will not say (no such topic yet, or no right to describe it)."""
    wanted = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})
    try:
        [response] = await admin.describe_configs([wanted])
        [(code, _, _, _, entries)] = response.resources
        if code:
            raise for_code(code)()
        [(_, value, *_)] = entries
        return min(int(value), RECORD_LIMIT)
    except (KafkaError, OSError, ValueError) as exc:
        _unread(topic, exc)
        return None


async def read_record_limit(settings: ServiceSettings, client_id: str, topic: str) -> int | None:
    """`topic`'s limit (record_limit), asked by an admin client of its own; None, with a
    warning, where the brokers do not say it within READ_WAIT_S."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{client_id}-limits",
        **settings.kafka_security().client_kwargs(),
    )
    try:
        async with asyncio.timeout(READ_WAIT_S):
            await admin.start()
            return await record_limit(admin, topic)
    except (KafkaError, OSError, TimeoutError) as exc:
        _unread(topic, exc)
        return None
    finally:
        await admin.close()


def read_record_limit_blocking(settings: ServiceSettings, client_id: str, topic: str) -> int | None:
    """read_record_limit from synchronous code, on a thread and loop of its own (so whether
    the caller runs a loop does not matter)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, read_record_limit(settings, client_id, topic)).result()


def refusal_after(
    topic: str, size: int, limit: int, again: bool, refused: bool
) -> RecordRefusedError | None:
    """What a record the broker failed becomes once the limit is read again: `refused` for
    its size, or failed beside such a one (out of sequence); `again`: on its second try.
    prompt_too_large past the limit, or refused a second time; else None: sent once more
    (through a fresh producer, or alone), or on the second try raised as Kafka failed it."""
    if size > limit:
        return RecordRefusedError(topic, size, limit)
    return RecordRefusedError(topic, size, None) if again and refused else None


def _unread(topic: str, exc: BaseException) -> None:
    why = str(exc) if isinstance(exc, KafkaError) else explain(exc)
    log.warning("cannot read %s's max.message.bytes: %s", topic, why)
