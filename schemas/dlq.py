"""The dead-letter record: what llmq.dlq holds for a record that could not be served, the
same from the stream processor and from the workers."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.errors import LlmqError
from schemas.names import (
    HEADER_ERROR_CODE,
    HEADER_ORIGINAL_BYTES,
    HEADER_REASON,
    HEADER_SOURCE_TOPIC,
)
from schemas.request import MAX_RECORD_BYTES

MAX_KEY_BYTES = 1024
"""A dead-lettered record's key is cut to this (llmq's own keys are ids and fingerprints)."""


@dataclass(frozen=True)
class DeadLetter:
    """One llmq.dlq record: the raw record as it came, the reason in headers."""

    key: bytes | None
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)


def dead_letter(
    source: str,
    key: bytes | None,
    raw: bytes | None,
    error: LlmqError,
    room: int = MAX_RECORD_BYTES,
) -> DeadLetter:
    """The record from `source` that failed with `error`: a tombstone becomes an empty value,
    and a value over the admission limit (or `room`, if less) is cut to it, its original
    length in a header (as it came it may not fit in a message the producer or the broker
    takes)."""
    headers = {
        HEADER_REASON: error.message.encode(),
        HEADER_ERROR_CODE: error.code.value.encode(),
        HEADER_SOURCE_TOPIC: source.encode(),
    }
    value = raw or b""
    room = max(0, min(room, MAX_RECORD_BYTES))
    if len(value) > room:
        headers[HEADER_ORIGINAL_BYTES] = str(len(value)).encode()
        value = value[:room]
    if key is not None and len(key) > MAX_KEY_BYTES:
        key = key[:MAX_KEY_BYTES]
    return DeadLetter(key, value, headers)
