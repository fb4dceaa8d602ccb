"""A batch whose front door reaches Redis but not Kafka: a send Kafka never takes (the
client's idempotent producer gives no record up) held its step, which renewed the batch's
lease for the whole outage, so no other door could take it. A send is now bounded
(SEND_WAIT_S), its timeout a failed step, and MAX_FAILED_STEPS of them give the lease up.
Time is the loop's, virtual (tests/unit/clock.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from gateway.batch.runner import MAX_FAILED_STEPS, SEND_WAIT_S, Pace, Runner
from schemas.catalog import Catalog
from schemas.errors import LlmqError
from schemas.request import InferenceRequest
from tests.unit.clock import run_virtual
from tests.unit.test_batch_pacing import BATCH, MemoryStore

pytestmark = pytest.mark.timeout(30)

LINES = 3


class Leases(MemoryStore):
    """The batch in memory, its lease always this door's; leases and releases counted."""

    def __init__(self, status: str, *, sent: bool) -> None:
        super().__init__(LINES, time.time() + 86_400)
        self.fields["status"] = status
        if sent:  # every line, none answered yet
            self.fields.update(cursor=str(LINES), sent=str(LINES), cancelling_at=str(time.time()))
        self.leases = self.releases = 0

    async def lease(self, batch_id: str, owner: str, ttl_s: float) -> bool:
        self.leases += 1
        return True

    async def release(self, batch_id: str, owner: str) -> None:
        self.releases += 1

    async def unfinished(self, batch_id: str) -> AsyncIterator[list[tuple[int, str]]]:
        yield [(n, self.ids[n]) for n in range(LINES) if n not in self.output]


class Unreachable:
    """llmq's client with Kafka away: neither a line nor a cancel is ever taken."""

    async def publish(self, requests: Sequence[InferenceRequest]) -> dict[str, LlmqError]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def cancel(self, correlation_id: str, *, tenant: str | None = None) -> None:
        await asyncio.Event().wait()


@pytest.mark.parametrize("status", ["in_progress", "cancelling"])
def test_a_door_that_cannot_reach_kafka_gives_the_lease_up(
    caplog: pytest.LogCaptureFixture, status: str
) -> None:
    """Lines to send, or cancels to send: each step fails at SEND_WAIT_S; at MAX_FAILED_STEPS
    the lease is given up, and the door leaves the batch alone a lease's length."""
    store = Leases(status, sent=status == "cancelling")
    door = Runner(store, Unreachable(), Catalog.builtin(), "door-1", Pace())

    async def run() -> None:
        for _ in range(MAX_FAILED_STEPS):
            async with asyncio.timeout(10 * SEND_WAIT_S):  # unbounded, a step ends here
                await door.tick()

    with caplog.at_level(logging.WARNING, logger="gateway.batch.runner"):
        run_virtual(run())
    assert store.releases == 1 and store.leases > MAX_FAILED_STEPS
    leases = store.leases
    run_virtual(door.tick())
    assert store.leases == leases  # left alone: another door may take it
    warned = [r.getMessage() for r in caplog.records]
    waits = f"batch {BATCH} waits: TimeoutError: Kafka took no record in {SEND_WAIT_S:g} s"
    assert warned[:MAX_FAILED_STEPS] == [waits] * MAX_FAILED_STEPS
    assert warned[MAX_FAILED_STEPS:] == [
        f"batch {BATCH}: {MAX_FAILED_STEPS} steps failed in a row; its lease is given up for "
        "another front door"
    ]


def test_an_expired_batchs_cancels_do_not_hold_its_step(caplog: pytest.LogCaptureFixture) -> None:
    """Its lines get their error lines, then the cancels of those in flight are sent: a
    cancel Kafka does not take fails the step at SEND_WAIT_S."""
    store = Leases("in_progress", sent=True)
    store.fields["expires_at"] = str(time.time() - 1)
    door = Runner(store, Unreachable(), Catalog.builtin(), "door-1", Pace())

    async def run() -> None:
        async with asyncio.timeout(10 * SEND_WAIT_S):  # unbounded, the step ends here
            await door.tick()

    with caplog.at_level(logging.WARNING, logger="gateway.batch.runner"):
        run_virtual(run())
    assert sorted(store.output) == list(range(LINES))  # each line's batch_expired
    assert [r.getMessage() for r in caplog.records] == [
        f"batch {BATCH} waits: TimeoutError: Kafka took no record in {SEND_WAIT_S:g} s"
    ]
