"""Redis commands of concurrent callers sent together: the commands one process's callers
issue in one turn of its event loop go to Redis as one pipeline, one connection taken from
the pool, one write and one read for all of them, where each was a round trip of its own.
The stream processor answers a cache hit with three commands (the cache read, the result
write, the saved cost's rollup) from callers that run side by side; sent one by one, redis-py's
command path took about a fifth of its loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Command = Callable[[Pipeline], object]
"""Adds one command to the pipeline it is given: `lambda pipe: pipe.get(key)`."""
Waiting = tuple[Command, "asyncio.Future[Any]"]
"""A command given, and its caller's reply to come."""


class Pipelined:
    """Sends the commands given to `run` in one turn of the loop as one pipeline (not a
    transaction: each command stands alone, as it would sent by itself)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        """The client itself, for what does not go through a pipeline."""
        self._batch: list[Waiting] | None = None
        """The commands given in this turn, until their task takes them."""
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, command: Command) -> Any:
        """The reply to `command`, sent with every other command given in this turn of the
        loop; raises its error (a RedisError) as the command sent alone would. A caller
        cancelled while it waits does not take its command back: it is sent all the same.
        The batch is sent again whole where the client retries a lost connection (llmq's
        do not: llmq.redis_client), so its commands must bear that."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._batch is None:
            # The task's first step comes after this turn's callers, which join the batch.
            self._batch = []
            task = asyncio.create_task(self._send(self._batch))
            self._sending.add(task)
            task.add_done_callback(partial(self._sent, self._batch))
        self._batch.append((command, future))
        return await future

    async def script(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """The reply to a registered script, by its hash in this turn's pipeline; a Redis
        that does not know it yet (new, or restarted) is sent it once, alone."""
        sha = script.sha
        try:
            return await self.run(lambda pipe: pipe.evalsha(sha, len(keys), *keys, *args))
        except NoScriptError:
            return await script(keys=keys, args=args)

    async def _send(self, waiting: list[Waiting]) -> None:
        """The commands waiting, as one pipeline; each caller gets its own reply or error."""
        self._batch = None
        pipe = self.client.pipeline(transaction=False)
        batch = [future for command, future in waiting if _queued(pipe, command, future)]
        if not batch:
            return
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection's: every caller's
            replies = [exc] * len(batch)
        for future, reply in zip(batch, replies, strict=True):
            _settle(future, reply)

    def _sent(self, waiting: list[Waiting], task: asyncio.Task[None]) -> None:
        """A batch's end: callers its task left waiting (cancelled before its first step, at
        the loop's close; or failed) are cancelled or told why, and the next call starts a
        batch of its own."""
        self._sending.discard(task)
        if self._batch is waiting:
            self._batch = None
        failed = None if task.cancelled() else task.exception()
        for _, future in waiting:
            if failed is None:
                future.cancel()
            else:
                _settle(future, failed)


def _queued(pipe: Pipeline, command: Command, future: asyncio.Future[Any]) -> bool:
    """Whether `command` is in the pipeline, as one command whose arguments Redis can take;
    else its caller is told why, and the others' commands go without it (redis-py checks
    some arguments as it queues a command, their types only as it sends the pipeline)."""
    stack = pipe.command_stack
    before = len(stack)
    try:
        command(pipe)
        if len(stack) != before + 1:
            raise TypeError(f"a command given to Pipelined added {len(stack) - before}, not 1")
        encode = pipe.connection_pool.get_encoder().encode  # type: ignore[no-untyped-call]
        for arg in stack[-1][0]:
            encode(arg)
    except Exception as exc:
        del stack[before:]
        _settle(future, exc)
        return False
    return True


def _settle(future: asyncio.Future[Any], reply: Any) -> None:
    """Give a caller its reply, or raise its error in it; one that gave up is not told."""
    if future.done():
        return
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)
