"""A client that closes while Kafka is away: its producer is idempotent, and aiokafka never
gives such a record up, so its stop waited for the broker (a front door was still alive
minutes after SIGTERM). close() gives the flush CLOSE_FLUSH_S, then says how many records it
leaves unsent and where Kafka is. Time is the loop's, virtual (tests/unit/clock.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from llmq.aio import CLOSE_FLUSH_S, AsyncClient
from schemas.names import REQUESTS
from schemas.settings import ServiceSettings
from tests.unit.clock import run_virtual

pytestmark = pytest.mark.timeout(30)

KAFKA = "kafka-0.example:9092"
SETTINGS = ServiceSettings(kafka_bootstrap=KAFKA, redis_url="redis://127.0.0.1:1/0")


class Unreachable:
    """aiokafka's idempotent producer with every broker away: a record is taken and never
    acknowledged, and its stop waits for the records taken."""

    def __init__(self) -> None:
        self.stopping = False

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.Event().wait()


def test_close_with_kafka_away_leaves_what_it_did_not_take_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = Unreachable()

    async def run() -> None:
        app = AsyncClient(SETTINGS)
        app._producer = producer
        sends = [asyncio.create_task(app._send(REQUESTS, f"c{n}", b"{}")) for n in range(2)]
        await asyncio.sleep(0)  # both handed to the producer
        sends[1].cancel()  # its caller stopped waiting: the record is still to be sent
        try:
            async with asyncio.timeout(10 * CLOSE_FLUSH_S):  # unbounded, it ends here
                await app.close()
        finally:
            for send in sends:
                send.cancel()
            await asyncio.gather(*sends, return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="llmq.aio"):
        run_virtual(run())
    assert producer.stopping
    assert [r.getMessage() for r in caplog.records] == [
        f"closing: 2 record(s) left unsent: Kafka at {KAFKA} did not take them in "
        f"{CLOSE_FLUSH_S:g} s"
    ]
