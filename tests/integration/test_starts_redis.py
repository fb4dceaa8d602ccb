"""The crash-loop bound's start counts against a real redis-server: counted per record,
cleared by an outcome (which marks the record answered), given back by a hand-back,
forgotten after a day, a correction that Redis missed sent again once it answers, and off
(every start unseen, nothing answered) while Redis is away."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from schemas.lanes import Lane
from schemas.names import answered_key, starts_key, work_topic
from tools.stack.ports import free_block
from workers.starts import ANSWERED_TTL_S, STARTS_TTL_S, RedisStarts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TOPIC = work_topic("m", Lane.BATCH)


def test_starts_are_counted_per_record_until_an_outcome(redis_port: int) -> None:
    async def main() -> None:
        client = aioredis.Redis(port=redis_port)
        starts = RedisStarts(client)
        try:
            assert await starts.count(TOPIC, 1, 7) == 0
            for crashed in [RedisStarts(client), RedisStarts(client)]:  # died mid-generation
                await crashed.begin(TOPIC, 1, 7)
            await starts.begin(TOPIC, 1, 7)
            await starts.begin(TOPIC, 1, 8)
            await starts.begin(TOPIC, 2, 7)
            assert await starts.count(TOPIC, 1, 7) == 3
            assert await starts.count(TOPIC, 1, 8) == 1, "another offset"
            assert await starts.count(TOPIC, 2, 7) == 1, "another partition"
            await starts.hand_back(TOPIC, 1, 7)
            assert await starts.count(TOPIC, 1, 7) == 2, "a hand-back took its start back"
            await starts.hand_back(TOPIC, 1, 7)
            assert await starts.count(TOPIC, 1, 7) == 2, "its own start, once"
            await starts.end(TOPIC, 1, 7, "c-7")
            assert await starts.count(TOPIC, 1, 7) == 0, "an outcome cleared the count"
            assert await starts.answered(TOPIC, 1, 7, "c-7"), "and marked it answered"
            assert not await starts.answered(TOPIC, 1, 7, "c-other"), "as that request"
            assert not await starts.answered(TOPIC, 1, 8, "c-7"), "at that offset"
            assert 0 < await client.ttl(answered_key(TOPIC, 1, 7)) <= ANSWERED_TTL_S
            assert 0 < await client.ttl(starts_key(TOPIC, 1, 8)) <= STARTS_TTL_S
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_hand_back_or_outcome_redis_missed_is_sent_again_once_it_answers(redis_port: int) -> None:
    async def main() -> None:
        client, admin = aioredis.Redis(port=redis_port), aioredis.Redis(port=redis_port)
        starts = RedisStarts(client, timeout_s=0.2, away_s=0.0)
        try:
            await starts.begin(TOPIC, 3, 1)
            await starts.begin(TOPIC, 3, 2)
            await admin.client_pause(10_000, all=False)  # writes wait: each call times out
            try:
                await starts.hand_back(TOPIC, 3, 1)
                await starts.end(TOPIC, 3, 2, "c-2")
            finally:
                await admin.client_unpause()
            assert await starts.count(TOPIC, 3, 1) == 0, "not taken for a crash"
            assert await starts.count(TOPIC, 3, 2) == 0
            assert await starts.answered(TOPIC, 3, 2, "c-2"), "the outcome's mark, sent again"
        finally:
            await client.aclose()
            await admin.aclose()

    asyncio.run(main())


def test_without_redis_no_record_reads_as_started_and_one_warning_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> list[int]:
        nobody = free_block(1)
        client = aioredis.Redis(port=nobody, socket_connect_timeout=0.5, socket_timeout=0.5)
        starts = RedisStarts(client)
        try:
            counts = []
            for _ in range(3):
                await starts.begin(TOPIC, 0, 0)
                counts.append(await starts.count(TOPIC, 0, 0))
            await starts.hand_back(TOPIC, 0, 0)
            await starts.end(TOPIC, 0, 0, "c-0")
            counts.append(int(await starts.answered(TOPIC, 0, 0, "c-0")))
            return counts
        finally:
            await client.aclose()

    with caplog.at_level(logging.WARNING, logger="workers.starts"):
        assert asyncio.run(main()) == [0, 0, 0, 0]
    [warning] = caplog.records
    assert "redelivered without bound until Redis is back" in warning.getMessage()
