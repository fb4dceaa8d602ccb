"""The metering agent's poison records: an unreadable event goes to llmq.dlq with its reason,
as every stage's does, and one that cannot go is logged, not raised."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest

from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.names import DLQ, HEADER_ERROR_CODE, HEADER_REASON, HEADER_SOURCE_TOPIC, METERING
from streams.gate import TenantGate
from streams.meter import Meter
from streams.outbox import Outbox
from streams.rollups import CostRollups
from tests.unit.stages import FailingSend, FakeSend, FakeStore


class _Counts:
    """The gate's and the rollups' counting, recorded (TenantGate.count, CostRollups.add)."""

    def __init__(self) -> None:
        self.counted: list[str] = []

    async def count(self, event: MeteringEvent) -> None:
        self.counted.append(f"budget {event.correlation_id}")

    async def add(self, event: MeteringEvent) -> bool:
        self.counted.append(f"rollup {event.correlation_id}")
        return True


def _meter(send: FakeSend) -> tuple[Meter, _Counts]:
    counts = _Counts()
    outbox = Outbox(FakeStore(), send)
    return Meter(cast(TenantGate, counts), cast(CostRollups, counts), outbox), counts


def test_an_unreadable_metering_event_is_dead_lettered_not_counted() -> None:
    send = FakeSend()
    meter, counts = _meter(send)
    asyncio.run(meter.on_metering(b"c-1", b'{"tenant": "acme", "cost_usd": "lots"}'))
    [letter] = send.sent
    assert letter.topic == DLQ and letter.key == b"c-1"
    assert letter.value == b'{"tenant": "acme", "cost_usd": "lots"}'
    headers = dict(letter.headers or {})
    assert headers[HEADER_SOURCE_TOPIC] == METERING.encode()
    assert headers[HEADER_ERROR_CODE] == b"invalid_request"
    assert headers[HEADER_REASON].startswith(b"unreadable metering event: ")
    assert counts.counted == []


def test_a_readable_metering_event_is_counted_not_dead_lettered() -> None:
    send = FakeSend()
    meter, counts = _meter(send)
    event = MeteringEvent(
        correlation_id="c-2",
        tenant="acme",
        model="smollm2-135m",
        lane=Lane.STANDARD,
        fingerprint="f" * 64,
        prompt_tokens=10,
        completion_tokens=2,
        cost_usd=0.001,
        queue_ms=1,
        ttft_ms=None,
        engine_ms=1,
        worker="w",
        at=1e9,
    )
    asyncio.run(meter.on_metering(b"c-2", event.model_dump_json().encode()))
    assert send.sent == [] and counts.counted == ["budget c-2", "rollup c-2"]


def test_a_dead_letter_that_cannot_go_is_logged_and_the_record_passes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failure waiting cannot mend (not Kafka's retriable kind) is not raised: faust would
    commit past the raising agent anyway, and the event would be gone without a word."""
    send = FailingSend(DLQ, failures=1)
    meter, counts = _meter(send)
    with caplog.at_level(logging.ERROR, logger="streams.meter"):
        asyncio.run(meter.on_metering(None, b"not json"))
    assert send.sent == [] and counts.counted == []
    [lost] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "was lost" in lost.getMessage() and "broker gone" in lost.getMessage()
