"""Redis commands of concurrent callers sent together: the commands one process's callers
issue in one turn of its event loop go to Redis as one pipeline, one connection taken from
the pool, one write and one read for all of them, where each was a round trip of its own.
The stream processor answers a cache hit with three commands (the cache read, the result
write, the saved cost's rollup) from callers that run side by side; sent one by one, redis-py's
command path took about a fifth of its loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Command = Callable[[Pipeline], object]
"""Adds one command to the pipeline it is given: `lambda pipe: pipe.get(key)`."""


class Pipelined:
    """Sends the commands given to `run` in one turn of the loop as one pipeline (not a
    transaction: each command stands alone, as it would sent by itself)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        """The client itself, for what does not go through a pipeline."""
        self._waiting: list[tuple[Command, asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self, command: Command) -> Any:
        """The reply to `command`, sent with every other command given in this turn of the
        loop; raises its error (a RedisError) as the command sent alone would. A caller
        cancelled while it waits does not take its command back: it is sent all the same."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._waiting:
            # The task's first step comes after this turn's callers, which join the batch.
            task = asyncio.create_task(self._send())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._waiting.append((command, future))
        return await future

    async def script(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """The reply to a registered script, by its hash in this turn's pipeline; a Redis
        that does not know it yet (new, or restarted) is sent it once, alone."""
        sha = script.sha
        try:
            return await self.run(lambda pipe: pipe.evalsha(sha, len(keys), *keys, *args))
        except NoScriptError:
            return await script(keys=keys, args=args)

    async def _send(self) -> None:
        """The commands waiting, as one pipeline; each caller gets its own reply or error."""
        waiting, self._waiting = self._waiting, []
        pipe = self.client.pipeline(transaction=False)
        batch = [future for command, future in waiting if _queued(pipe, command, future)]
        if not batch:
            return
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection's: every caller's
            replies = [exc] * len(batch)
        except BaseException:  # cancelled, the loop closing: so are its callers
            for future in batch:
                future.cancel()
            raise
        for future, reply in zip(batch, replies, strict=True):
            _settle(future, reply)


def _queued(pipe: Pipeline, command: Command, future: asyncio.Future[Any]) -> bool:
    """Whether `command` is in the pipeline; its caller is told why not (redis-py refuses
    some arguments as it queues them)."""
    try:
        command(pipe)
    except Exception as exc:
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
