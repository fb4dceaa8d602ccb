"""Pipelined against a real redis-server: the commands of concurrent callers in one turn of
the loop go as one pipeline, each caller gets its own reply or its own error, and nothing is
lost when a caller gives up or Redis is away."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

from llmq.pipelined import Command, Pipelined

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _counting(client: aioredis.Redis) -> list[int]:
    """The commands in each pipeline `client` sends, as it sends them."""
    sizes: list[int] = []
    make = client.pipeline

    def pipeline(transaction: bool = True) -> Pipeline:
        pipe = make(transaction=transaction)
        execute = pipe.execute

        async def counted(raise_on_error: bool = True) -> list[Any]:
            sizes.append(len(pipe.command_stack))
            return await execute(raise_on_error=raise_on_error)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe

    client.pipeline = pipeline  # type: ignore[method-assign,assignment]
    return sizes


def _get(key: str) -> Command:
    return lambda pipe: pipe.get(key)


def _run(main: Callable[[aioredis.Redis], Any], port: int) -> None:
    async def body() -> None:
        client = aioredis.Redis(port=port)
        try:
            await main(client)
        finally:
            await client.aclose()

    asyncio.run(body())


def test_one_turns_commands_go_as_one_pipeline(redis_port: int) -> None:
    async def main(client: aioredis.Redis) -> None:
        sizes = _counting(client)
        pipelined = Pipelined(client)
        await client.mset({f"k{n}": str(n) for n in range(50)})
        replies = await asyncio.gather(*(pipelined.run(_get(f"k{n}")) for n in range(50)))
        assert replies == [str(n).encode() for n in range(50)]
        assert sizes == [50]
        # One after another, each its own turn: a pipeline each.
        assert await pipelined.run(lambda pipe: pipe.set("a", 1, nx=True, get=True)) is None
        assert await pipelined.run(lambda pipe: pipe.set("a", 2, nx=True, get=True)) == b"1"
        assert sizes == [50, 1, 1]

    _run(main, redis_port)


def test_each_caller_gets_its_own_error(redis_port: int) -> None:
    async def main(client: aioredis.Redis) -> None:
        pipelined = Pipelined(client)
        await client.set("text", "not a number")
        calls = [
            pipelined.run(lambda pipe: pipe.incr("text")),  # Redis refuses it
            pipelined.run(lambda pipe: pipe.set("x", 1, ex=1, px=1)),  # redis-py refuses it
            pipelined.run(lambda pipe: pipe.incr("counter")),
        ]
        refused, invalid, counted = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(refused, ResponseError)
        assert isinstance(invalid, DataError)
        assert counted == 1
        assert await client.get("counter") == b"1"
        assert not await client.exists("x")

    _run(main, redis_port)


def test_a_caller_that_gives_up_takes_nothing_from_the_others(redis_port: int) -> None:
    async def main(client: aioredis.Redis) -> None:
        pipelined = Pipelined(client)
        leaving = asyncio.ensure_future(pipelined.run(lambda pipe: pipe.set("left", 1)))
        staying = asyncio.ensure_future(pipelined.run(lambda pipe: pipe.incr("stayed")))
        await asyncio.sleep(0)  # both queued
        leaving.cancel()
        assert await staying == 1
        assert leaving.cancelled()
        assert await client.get("left") == b"1", "a command given is sent"

    _run(main, redis_port)


def test_a_script_redis_has_forgotten_is_sent_again(redis_port: int) -> None:
    async def main(client: aioredis.Redis) -> None:
        pipelined = Pipelined(client)
        script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        assert await pipelined.script(script, ["n"], [2]) == 2
        await client.script_flush()  # as a restarted Redis
        results = await asyncio.gather(
            pipelined.script(script, ["n"], [3]), pipelined.script(script, ["m"], [1])
        )
        assert list(results) == [5, 1]

    _run(main, redis_port)


def test_with_redis_away_every_caller_is_told() -> None:
    async def main() -> None:
        # Nothing listens on port 1; told at once, not after redis-py's retries.
        client = aioredis.Redis(port=1, retry=Retry(NoBackoff(), 0))
        pipelined = Pipelined(client)
        try:
            outcomes = await asyncio.gather(
                pipelined.run(lambda pipe: pipe.get("a")),
                pipelined.run(lambda pipe: pipe.get("b")),
                return_exceptions=True,
            )
        finally:
            await client.aclose()
        assert all(isinstance(o, RedisConnectionError) for o in outcomes), outcomes

    asyncio.run(main())


def test_an_argument_redis_cannot_take_fails_only_its_own_caller(redis_port: int) -> None:
    """redis-py checks arguments' types only as it sends the pipeline: one caller's None
    failed every command of its turn."""

    async def main(client: aioredis.Redis) -> None:
        pipelined = Pipelined(client)
        await client.set("k", "v")
        calls = [
            pipelined.run(_get("k")),
            pipelined.run(lambda pipe: pipe.set("x", None)),  # type: ignore[arg-type]
            pipelined.run(lambda pipe: pipe.incr("n-arg")),
        ]
        value, refused, counted = await asyncio.gather(*calls, return_exceptions=True)
        assert (value, counted) == (b"v", 1)
        assert isinstance(refused, DataError)

    _run(main, redis_port)


def test_a_command_given_as_none_or_two_is_refused_to_its_caller_alone(redis_port: int) -> None:
    """Its replies were given to the callers after it, or they waited for ever."""

    async def main(client: aioredis.Redis) -> None:
        pipelined = Pipelined(client)
        await client.set("k", "v")
        calls = [
            pipelined.run(lambda pipe: (pipe.set("t", 1), pipe.get("t"))),
            pipelined.run(_get("k")),
            pipelined.run(lambda pipe: None),
            pipelined.run(lambda pipe: pipe.incr("n-two")),
        ]
        async with asyncio.timeout(5):
            two, value, none, counted = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(two, TypeError) and isinstance(none, TypeError)
        assert (value, counted) == (b"v", 1)
        assert not await client.exists("t")

    _run(main, redis_port)


def test_a_batch_whose_send_was_cancelled_before_it_began_leaves_no_one_waiting(
    redis_port: int,
) -> None:
    """At the loop's close every task is cancelled, the batch's too, maybe before its first
    step: its callers waited for ever, and so did every later one."""

    async def main(client: aioredis.Redis) -> None:
        pipelined = Pipelined(client)
        await client.set("k", "v")
        caller = asyncio.ensure_future(pipelined.run(_get("k")))
        await asyncio.sleep(0)  # the caller has given its command; its batch is not sent
        (sending,) = pipelined._sending
        sending.cancel()
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await caller
            assert await pipelined.run(_get("k")) == b"v"

    _run(main, redis_port)
