"""Every read of a file's lines takes PAGE_BYTES at most, unless one line alone takes more: a
download, a batch's validation, its sends and sends again, and its output file's download.
Read 64 lines a call, lines of up to MAX_LINE_BYTES (1.4 MB) held ~90 MB per read, and 8
downloads at once passed the front door's 1 GiB."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from gateway.batch.runner import Pace, Runner
from gateway.batch.store import MAX_LINE_BYTES, PAGE_BYTES, BatchStore, Outcome
from tests.integration.batch_inputs import CATALOG, TENANT, Recorder, chunks, line
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LINES, LONG = 12, MAX_LINE_BYTES - 1
BOUND = PAGE_BYTES + MAX_LINE_BYTES
T = TypeVar("T")


def _long(n: int) -> str:
    """A valid line of LONG bytes: spaces pad its JSON, which its request does not carry."""
    text = line(n)
    return text + " " * (LONG - len(text))


def _size(reply: object) -> int:
    """The bytes a Redis reply holds."""
    if isinstance(reply, bytes):
        return len(reply)
    if isinstance(reply, list | tuple):
        return sum(map(_size, reply))
    if isinstance(reply, dict):
        return sum(_size(k) + _size(v) for k, v in reply.items())
    return 0


class Reads:
    """The bytes of each reply the client reads, by what the test was doing."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.seen: dict[str, list[int]] = {}
        self.doing = "setup"
        send: Callable[..., Awaitable[Any]] = client.execute_command

        async def recorded(*args: Any, **options: Any) -> Any:
            reply = await send(*args, **options)
            self.seen.setdefault(self.doing, []).append(_size(reply))
            return reply

        client.execute_command = recorded  # type: ignore[method-assign]

    async def during(self, doing: str, step: Awaitable[T]) -> T:
        self.doing = doing
        return await step


async def _batch(store: BatchStore, file_id: str, count: str) -> str:
    batch_id, now = f"batch_{time.time_ns():x}", time.time()
    await store.create_batch(
        {
            "id": batch_id,
            "tenant": TENANT,
            "endpoint": "/v1/chat/completions",
            "input_file_id": file_id,
            "lines": count,
            "completion_window": "24h",
            "status": "validating",
            "created_at": str(int(now)),
            "expires_at": str(now + 3600),
        }
    )
    return batch_id


def test_every_read_of_long_lines_is_a_page_of_page_bytes(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        reads = Reads(client)
        store, recorder = BatchStore(client, 3600), Recorder()
        lines = [_long(n) for n in range(LINES)]
        meta = await store.create_file(
            TENANT, "long.jsonl", "batch", chunks("\n".join(lines), 1 << 20)
        )
        batch_id = await _batch(store, meta["id"], meta["lines"])
        runner = Runner(store, recorder, CATALOG, "door-1", Pace(in_flight=LINES))

        async def download(file_id: str) -> list[bytes]:
            found = await store.file(file_id, TENANT)
            assert found is not None
            return [line async for line in store.content(found)]

        async def again() -> None:
            fields = await store.batch(batch_id)
            assert fields is not None
            assert await runner._send_retries(fields, LINES) == LINES

        got = await reads.during("download", download(meta["id"]))
        assert got == [f"{t}\n".encode() for t in lines]
        await reads.during("validation", runner.tick())
        await reads.during("sends", runner.tick())
        assert len(recorder.sent) == LINES
        retries = [Outcome(n, 0, "retry", {}, retry_at=time.time()) for n in range(LINES)]
        assert await store.record(batch_id, TENANT, retries) == [2] * LINES
        await reads.during("sends again", again())
        assert len(recorder.sent) == 2 * LINES
        pad = "x" * (LONG - 100)
        answers = [
            Outcome(n, 1, "output", {"custom_id": f"c{n}", "pad": pad}) for n in range(LINES)
        ]
        assert await store.record(batch_id, TENANT, answers) == [1] * LINES
        await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "completed"
        output = await reads.during("output", download(fields["output_file_id"]))
        for doing in ("download", "validation", "sends", "sends again", "output"):
            assert sum(reads.seen[doing]) >= LINES * (LONG - 100), f"{doing}: lines unread"
            assert max(reads.seen[doing]) < BOUND, f"{doing} read {max(reads.seen[doing])} bytes"
        # An output file reads in line order.
        assert [json.loads(o)["custom_id"] for o in output] == [f"c{n}" for n in range(LINES)]

    run_async(redis_port, body)
