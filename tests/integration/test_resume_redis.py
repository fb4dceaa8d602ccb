"""A stream resumed at another front door than the one its client left, with a real
redis-server between the doors (no Kafka: the doors' cancellations are recorded): the door
the client left does not cancel a request read again elsewhere, and cancels it once nobody
reads it; a stopping door gives a stream its drain cut off what is left of its grace first."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from gateway.door import FrontDoor
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.tenants import TenantPolicy
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]

KEY = ("acme", "c1")


class Cancels:
    """The cancellations doors send, instead of sending them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.came = asyncio.Event()

    async def cancel(self, correlation_id: str, *, tenant: str | None = None) -> None:
        self.sent.append((tenant or "", correlation_id))
        self.came.set()


def _door(port: int, cancels: Cancels, grace_s: float = 5.0) -> FrontDoor:
    """A front door on the test's Redis, not started."""
    settings = GatewaySettings(redis_url=f"redis://127.0.0.1:{port}/0", resume_grace_s=grace_s)
    door = FrontDoor(settings, Catalog.builtin(), TenantPolicy())
    door.client.cancel = cancels.cancel  # type: ignore[method-assign]
    return door


def test_a_request_read_again_at_another_door_is_not_cancelled_by_the_one_it_left(
    redis_port: int,
) -> None:
    async def body(_: aioredis.Redis) -> None:
        cancels = Cancels()
        left, other = _door(redis_port, cancels), _door(redis_port, cancels)
        try:
            await other.resumed(*KEY)  # the client came back at another door
            await left._cancel_if_unread(KEY)  # the door it left, at the end of the grace time
            assert cancels.sent == []
            other.unread(*KEY)  # that stream ended: its client left again
            await asyncio.gather(*other._background)
            await left._cancel_if_unread(KEY)
            assert cancels.sent == [KEY]
        finally:
            await left._redis.aclose()
            await other._redis.aclose()

    run_async(redis_port, body)


def test_a_request_resumed_and_left_again_is_cancelled_after_the_grace_time(
    redis_port: int,
) -> None:
    async def body(_: aioredis.Redis) -> None:
        cancels = Cancels()
        door = _door(redis_port, cancels, grace_s=0.0)
        try:
            door.cancel(*KEY)
            await door.resumed(*KEY)  # in the grace time: spared here
            door.unread(*KEY)
            await asyncio.gather(*door._background)
            assert cancels.sent == []
            door.cancel(*KEY)  # its client left the resumed stream
            await asyncio.wait_for(cancels.came.wait(), 10)
            assert cancels.sent == [KEY]
        finally:
            await door._redis.aclose()

    run_async(redis_port, body)


def test_a_reader_count_that_lapsed_is_not_left_below_zero(redis_port: int) -> None:
    """A stream read past the count's expiry ended: DECR made the key anew at -1, without
    an expiry, and a later resume of that id counted 0 readers while it was read."""

    async def body(client: aioredis.Redis) -> None:
        door = _door(redis_port, Cancels())
        try:
            door.unread(*KEY)
            await asyncio.gather(*door._background)
            assert await client.keys("llmq:readers:*") == []
        finally:
            await door._redis.aclose()

    run_async(redis_port, body)


async def _cut_and_close(door: FrontDoor, *, late: bool) -> asyncio.Task[None]:
    """The drain cuts a stream off and the door stops (`late`: the stream's task learns of
    the cut once close has begun): close's task."""
    if not late:
        door.cancel(*KEY)
    closing = asyncio.create_task(door.close())
    await asyncio.sleep(0)
    if late:
        door.cancel(*KEY)
    return closing


@pytest.mark.parametrize("late", [False, True])
def test_a_stream_resumed_at_another_door_while_one_stops_is_not_cancelled(
    redis_port: int, late: bool
) -> None:
    """The stopping door sent the cancel 0.1 s after its drain, before the client could
    reach another door: every stream open past LLMQ_DRAIN_TIMEOUT_S was aborted at a
    rollout. It now waits out the stream's grace (LLMQ_RESUME_GRACE_S) first."""

    async def body(_: aioredis.Redis) -> None:
        cancels = Cancels()
        left, other = _door(redis_port, cancels, 2.0), _door(redis_port, cancels, 2.0)
        try:
            closing = await _cut_and_close(left, late=late)
            await asyncio.sleep(1.0)
            await other.resumed(*KEY)  # its client came back at the other door
            await closing
            assert cancels.sent == []
        finally:
            await other._redis.aclose()

    run_async(redis_port, body)


@pytest.mark.parametrize("late", [False, True])
def test_a_stream_nobody_resumes_is_cancelled_once_its_grace_is_over(
    redis_port: int, late: bool
) -> None:
    async def body(_: aioredis.Redis) -> None:
        cancels = Cancels()
        door = _door(redis_port, cancels, grace_s=1.0)
        closing = await _cut_and_close(door, late=late)
        await asyncio.sleep(0.5)
        assert cancels.sent == [], "cancelled within its grace"
        await closing
        assert cancels.sent == [KEY]

    run_async(redis_port, body)


def test_a_stopping_door_gives_a_stream_what_is_left_of_its_grace(redis_port: int) -> None:
    """Not the whole grace again: a stream cut 1 s before the door stops, with a 2 s grace,
    is cancelled about 1 s into close."""

    async def body(_: aioredis.Redis) -> None:
        cancels = Cancels()
        door = _door(redis_port, cancels, grace_s=2.0)
        door.cancel(*KEY)
        await asyncio.sleep(1.0)
        closing = asyncio.create_task(door.close())
        await asyncio.sleep(0.5)
        assert cancels.sent == []
        async with asyncio.timeout(1.5):
            await closing
        assert cancels.sent == [KEY]

    run_async(redis_port, body)
