"""A tenant's index of files and batches against a real redis-server of this module's own: it
holds little more than what still exists, and one listing passes few ids of objects gone."""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable
from typing import cast

import pytest
import redis.asyncio as aioredis
from fastapi import Request

from gateway.batch import routes
from gateway.batch.store import SWEEP, BatchStore
from schemas.names import batch_keys, file_keys, tenant_index_key
from tests.integration.batch_inputs import TENANT, batch, chunks, line
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]


async def _file(store: BatchStore) -> str:
    return (await store.create_file(TENANT, "in.jsonl", "batch", chunks(line(0))))["id"]


async def _batch(store: BatchStore) -> str:
    """A batch that ran: a tenant has MAX_RUNNING_BATCHES running at most."""
    batch_id = await batch(store, [line(0)])
    assert await store.move(batch_id, "completed", "validating")
    await store.finish(batch_id)
    return batch_id


@pytest.mark.parametrize(
    ("kind", "make", "fields"),
    [
        ("files", _file, lambda object_id: file_keys(object_id)[0]),
        ("batches", _batch, lambda object_id: batch_keys(object_id)["batch"]),
    ],
)
def test_writes_drop_ids_of_objects_gone_from_the_index(
    redis_port: int,
    kind: str,
    make: Callable[[BatchStore], Awaitable[str]],
    fields: Callable[[str], str],
) -> None:
    """A busy tenant that only ever lists newest first: its uploads and batches drop the ids
    of what expired, past more old objects still kept (files batches read) than one write
    checks, and an `after` one of them still goes on."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        kept = [await make(store) for _ in range(2 * SWEEP)]
        expired = [await make(store) for _ in range(3 * SWEEP)]
        await client.delete(*[fields(i) for i in expired])  # as if expired
        index = tenant_index_key(TENANT, kind)
        writes = 2 * (len(kept) + len(expired)) // SWEEP + 2  # twice over what there is
        later = [await make(store) for _ in range(writes)]
        listed = {i.decode() for i in await client.zrange(index, 0, -1)}
        assert listed == set(kept + later)
        assert await store.listed(TENANT, kind, expired[0], 1) == kept[-1:]

    run_async(redis_port, body)


class _Counted(BatchStore):
    """A store that counts the ids each unlisting takes, and a listing's steps."""

    unlisted: list[int]
    steps = 0

    async def unlist(self, tenant: str, kind: str, ids: list[str]) -> None:
        self.unlisted.append(len(ids))
        await super().unlist(tenant, kind, ids)

    async def listed(
        self, tenant: str, kind: str, after: str | None, limit: int, oldest_first: bool = False
    ) -> list[str] | None:
        self.steps += 1
        return await super().listed(tenant, kind, after, limit, oldest_first)


def test_a_listing_passes_few_ids_of_objects_gone_and_pages_on(redis_port: int) -> None:
    """Oldest first over more expired files than a listing passes: a page with an object
    stops at MAX_GONE_PASSED of them, short, has_more true (the SDK asks on after its last
    object); one without walks on, a step at a time, rather than end the listing empty."""

    async def body(client: aioredis.Redis) -> None:
        store = _Counted(client, 3600)
        store.unlisted = []
        live = [await _file(store) for _ in range(3)]
        index = tenant_index_key(TENANT, "files")
        expired = 2 * routes.MAX_GONE_PASSED + 5
        await client.zadd(index, {f"file-gone{n}": 10 + n for n in range(expired)})
        await client.zadd(index, {live[0]: 1, live[1]: 10**6, live[2]: 10**6 + 1})
        page = await routes._listed(_request_for(store), TENANT, _oldest_first(None))
        assert [f["id"] for f in page["data"]] == live[:1] and page["has_more"]
        assert await client.zcard(index) == len(live) + expired - routes.MAX_GONE_PASSED
        page = await routes._listed(_request_for(store), TENANT, _oldest_first(live[0]))
        assert [f["id"] for f in page["data"]] == live[1:] and not page["has_more"]
        assert await client.zcard(index) == len(live)
        assert max(store.unlisted) <= routes.MAX_GONE_PASSED

    run_async(redis_port, body)


def test_a_small_page_by_purpose_passes_other_files_a_step_of_many_at_a_time(
    redis_port: int,
) -> None:
    """limit=1 by purpose over thousands of files of another purpose (a tenant's batch output
    files): each step asked for the two ids the page lacked, 3 round trips a step, some
    thousands of steps; it reads MAX_GONE_PASSED ids a step."""

    async def body(client: aioredis.Redis) -> None:
        store = _Counted(client, 3600)
        store.unlisted = []
        inputs = [await _file(store) for _ in range(2)]
        others = [f"file-output-{n}" for n in range(2 * routes.MAX_GONE_PASSED + 500)]
        async with client.pipeline(transaction=False) as pipe:
            for n, file_id in enumerate(others):
                fields = {"id": file_id, "tenant": TENANT, "purpose": "batch_output"}
                pipe.hset(file_keys(file_id)[0], mapping=fields | {"filename": "o.jsonl"})
                pipe.zadd(tenant_index_key(TENANT, "files"), {file_id: 10 + n})
            await pipe.execute()
        await client.zadd(tenant_index_key(TENANT, "files"), {inputs[0]: 1, inputs[1]: 10**6})
        page = routes.Page("files", None, 1, routes.MAX_FILES_LISTED, purpose="batch")
        listing = await routes._listed(_request_for(store), TENANT, page)
        assert [f["id"] for f in listing["data"]] == inputs[1:] and listing["has_more"]
        assert store.steps <= 3  # 2,500 files of another purpose: 3 steps of 1,000
        store.steps = 0
        page = routes.Page("files", inputs[1], 1, routes.MAX_FILES_LISTED, purpose="batch")
        listing = await routes._listed(_request_for(store), TENANT, page)
        assert [f["id"] for f in listing["data"]] == inputs[:1] and not listing["has_more"]
        assert store.steps <= 3

    run_async(redis_port, body)


def _oldest_first(after: str | None) -> routes.Page:
    return routes.Page("files", after, 9, routes.MAX_FILES_LISTED, oldest_first=True)


def _request_for(store: BatchStore) -> Request:
    state = types.SimpleNamespace(door=types.SimpleNamespace(batches=store))
    return cast(Request, types.SimpleNamespace(app=types.SimpleNamespace(state=state)))
