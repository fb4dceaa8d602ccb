"""The stream processor notices Redis losing its data while it runs (streams/redis_epoch.py):
a flush is one loss for each watcher, told once at ERROR and counted; a fresh Redis and a
Redis away are none. Against a throwaway redis-server of this module's own."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from llmq.redis_client import bounded_client
from schemas.names import REDIS_EPOCH
from streams.redis_epoch import RedisEpoch
from tests.integration.helpers import start_redis, stop_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _losses() -> float:
    return REGISTRY.get_sample_value("llmq_streams_redis_data_lost_total") or 0.0


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _looks(port: int, watchers: int, steps: list[str]) -> list[list[bool]]:
    """Each step's looks: a step names the watchers that look, in order ("10": the second,
    then the first), after "flush " if Redis is emptied first."""

    async def main() -> list[list[bool]]:
        client = bounded_client(f"redis://127.0.0.1:{port}/0", socket_timeout=2)
        try:
            epochs = [RedisEpoch(client) for _ in range(watchers)]
            seen = []
            for step in steps:
                if step.startswith("flush "):
                    await client.flushall()
                seen.append([await epochs[int(i)].look() for i in step.removeprefix("flush ")])
            return seen
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_a_fresh_redis_is_no_loss_and_a_flush_is_one(
    redis_port: int, sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    before = _losses()
    caplog.set_level(logging.INFO)
    [first, again, flushed, after] = _looks(redis_port, 1, ["0", "0", "flush 0", "0"])
    assert first == again == [False]
    assert flushed == [True]
    assert after == [False], "a loss is told once"
    assert sync.get(REDIS_EPOCH) is not None, "set again after the flush"
    assert sync.ttl(REDIS_EPOCH) == -1, "without expiry"
    [error] = _errors(caplog)
    assert error.startswith("Redis lost its data (llmq:epoch is gone): tenants' spend")
    assert _losses() == before + 1


def test_two_watchers_each_tell_a_flush_once_whichever_sets_the_token_again(
    redis_port: int, sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    before = _losses()
    caplog.set_level(logging.INFO)
    # The first watcher sets the token again after the first flush, the second after the
    # second flush; the other finds it set, another than it saw.
    looks = _looks(redis_port, 2, ["01", "flush 01", "01", "flush 10", "10"])
    assert looks == [[False, False], [True, True], [False, False], [True, True], [False, False]]
    assert len(_errors(caplog)) == 4
    assert _losses() == before + 4


class _Beaten(aioredis.Redis):
    """A client whose set comes just after another process set the token."""

    async def set(self, name: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        await super().set(name, b"theirs")
        return await super().set(name, value, *args, **kwargs)


def test_a_watcher_beaten_to_setting_the_token_takes_the_other_s(
    redis_port: int, sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> list[bool]:
        # Its later looks find the token, so they set nothing and read what Redis holds.
        client = _Beaten(port=redis_port)
        epoch = RedisEpoch(client)
        try:
            return [await epoch.look(), await epoch.look()]
        finally:
            await client.aclose()

    caplog.set_level(logging.INFO)
    assert asyncio.run(main()) == [False, False], "it saw the other's token first"
    assert sync.get(REDIS_EPOCH) == b"theirs"
    assert _errors(caplog) == []


def test_a_redis_away_is_skipped_without_an_error(caplog: pytest.LogCaptureFixture) -> None:
    proc, port = start_redis()

    async def main() -> list[bool]:
        client = bounded_client(f"redis://127.0.0.1:{port}/0", socket_timeout=2)
        epoch = RedisEpoch(client)
        try:
            seen = [await epoch.look()]
            stop_redis(proc)
            seen += [await epoch.look(), await epoch.look()]
            return seen
        finally:
            await client.aclose()

    before = _losses()
    caplog.set_level(logging.INFO)
    try:
        assert asyncio.run(main()) == [False, False, False]
    finally:
        if proc.poll() is None:
            stop_redis(proc)
    assert _errors(caplog) == []
    assert _losses() == before
