"""Fuzzing llmq.requests on the real stack: a few hundred hostile records (tests/hostile.py),
each dead-lettered once and answered once when it names who waits; the stream processor
lives through all of them and still serves."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import replace

import pytest
from kafka import KafkaProducer

from llmq.client import Client, tail
from schemas.errors import ErrorCode
from schemas.names import (
    DLQ,
    HEADER_ERROR_CODE,
    HEADER_ORIGINAL_BYTES,
    HEADER_REASON,
    HEADER_SOURCE_TOPIC,
    REQUESTS,
    RESULTS,
)
from schemas.request import MAX_RECORD_BYTES
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings
from tests.hostile import CID, Hostile, examples, hostile_records, padded, with_field
from tests.integration.helpers import Record, collect, header
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DRAWN = 300
BIG_BYTES = 1_040_000
"""Under the broker's default message.max.bytes (1 MiB + 12), over 1,000,000 bytes."""


def _streams_pid(stack: LocalStack) -> int | None:
    return next(row.pid for row in stack.status() if row.name == "streams")


def _records(reply_to: str) -> dict[bytes, Hostile]:
    """The hostile records by Kafka key, each with a correlation id of its own."""
    drawn = examples(hostile_records(reply_to), DRAWN)
    too_big = ("bytes",)  # over the admission limit: that is what the reason must name
    drawn += [
        replace(padded(with_field(reply_to, "body.max_tokens", 0), BIG_BYTES), blame=too_big),
        replace(padded(with_field(reply_to, "correlation_id", None), BIG_BYTES), blame=too_big),
    ]
    tag = uuid.uuid4().hex[: len(CID) - 8]
    return {f"fuzz-{tag}-{i}".encode(): h.renamed(f"{tag}{i:08d}") for i, h in enumerate(drawn)}


def test_hostile_records_are_dead_lettered_and_answered_and_the_processor_survives(
    stack: LocalStack, client: Client, service_settings: ServiceSettings, reply_topic: str
) -> None:
    broker = service_settings.kafka_bootstrap
    pid = _streams_pid(stack)
    assert pid is not None
    records = _records(reply_topic)
    dlq, replies, defaults = tail(broker, DLQ), tail(broker, reply_topic), tail(broker, RESULTS)

    # 1) Publish every record, as an app with a bug (or a grudge) would.
    producer = KafkaProducer(bootstrap_servers=broker, acks="all", max_request_size=2_000_000)
    try:
        sends = [producer.send(REQUESTS, key=k, value=h.raw) for k, h in records.items()]
        for send in sends:
            send.get(timeout=60)
    finally:
        producer.close()

    # 2) Collect one dead letter per record, the replies to the records that name us, and
    # those to records whose reply_to is unusable, on the default reply topic (shared).
    answered = {h.correlation_id for h in records.values() if h.reply_to == reply_topic}
    elsewhere = {h.correlation_id for h in records.values() if h.reply_to == RESULTS}
    dead = collect(dlq, lambda rs: {r.key for r in rs} >= records.keys(), timeout_s=180)
    got = collect(replies, lambda rs: len(rs) >= len(answered), timeout_s=120)
    ours = collect(defaults, lambda rs: _ids(rs) >= elsewhere, timeout_s=60)

    # 3) The processor is the same process, and it still answers.
    result = client.ask("What is 2+2?", max_tokens=8, temperature=0.0)
    pid_after = _streams_pid(stack)
    got += collect(replies, lambda rs: False, timeout_s=1)  # anything sent twice is here now
    ours += collect(defaults, lambda rs: False, timeout_s=1)
    dlq.close()
    replies.close()
    defaults.close()

    letters: dict[bytes, list[Record]] = defaultdict(list)
    for record in dead:
        if record.key in records:
            letters[record.key].append(record)
    by_id: dict[str | None, list[InferenceResult]] = defaultdict(list)
    for record in got:
        reply = InferenceResult.model_validate_json(record.value)
        by_id[reply.correlation_id].append(reply)
    unexpected = set(by_id) - answered
    problems = [f"replies for records that name nobody here: {unexpected}"] if unexpected else []
    defaulted = [r for r in ours if r.key is not None and r.key.decode() in elsewhere]
    for record in defaulted:
        reply = InferenceResult.model_validate_json(record.value)
        by_id[reply.correlation_id].append(reply)
    for key, hostile in records.items():
        cid = hostile.correlation_id
        problem = _check(hostile, letters[key], by_id[cid] if cid is not None else [])
        if problem is not None:
            problems.append(f"{_shown(hostile.raw)}: {problem}")
    print(
        f"\nfuzz: {len(records)} hostile records sent, "
        f"{sum(len(rs) for rs in letters.values())} DLQ records, "
        f"{len(got)} error replies on the reply topic and {len(defaulted)} on {RESULTS} "
        f"({len(records) - len(answered) - len(elsewhere)} named nobody to answer)"
    )
    assert not problems, f"{len(problems)} of {len(records)} records mishandled:\n" + "\n".join(
        problems[:10]
    )
    assert pid_after == pid, "the stream processor restarted"
    assert result.status == "ok", result.error


def _ids(records: list[Record]) -> set[str]:
    return {record.key.decode() for record in records if record.key is not None}


def _check(hostile: Hostile, letters: list[Record], replies: list[InferenceResult]) -> str | None:
    """What is wrong with how one record was handled, or None."""
    if len(letters) != 1:
        return f"{len(letters)} DLQ records"
    [letter] = letters
    wrong = _wrong_letter(hostile, letter)
    if wrong is not None or hostile.correlation_id is None:
        return wrong
    reason = header(letter, HEADER_REASON) or ""  # _wrong_letter checked there is one
    code = header(letter, HEADER_ERROR_CODE)
    if len(replies) != 1:
        return f"{len(replies)} replies"
    error = replies[0].error
    if (
        replies[0].status != "error"
        or error is None
        or (error.code, error.message)
        != (
            code,
            reason,
        )
    ):
        return f"the reply {error} is not the DLQ's {code}: {reason}"
    if hostile.blame and not any(word in reason for word in hostile.blame):
        return f"{reason!r} names none of {hostile.blame}"
    return None


def _wrong_letter(hostile: Hostile, letter: Record) -> str | None:
    """What is wrong with the DLQ record of one hostile record, or None."""
    reason, code = header(letter, HEADER_REASON), header(letter, HEADER_ERROR_CODE)
    raw = hostile.raw or b""  # a tombstone is dead-lettered as an empty value
    if (letter.value or b"") != raw[:MAX_RECORD_BYTES]:
        return "the DLQ record is not the raw record (cut to the admission limit)"
    if len(raw) > MAX_RECORD_BYTES and header(letter, HEADER_ORIGINAL_BYTES) != str(len(raw)):
        return "a cut DLQ record does not say its original length"
    if header(letter, HEADER_SOURCE_TOPIC) != REQUESTS or not reason or code is None:
        return f"DLQ headers {letter.headers}"
    if code == ErrorCode.INTERNAL_ERROR.value:
        return f"an unexpected failure: {reason}"
    return None


def _shown(raw: bytes | None) -> str:
    """A record, short enough for a failure message."""
    return "a tombstone" if raw is None else f"{raw[:160]!r} ({len(raw)} bytes)"
