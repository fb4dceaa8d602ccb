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
    """A store that counts the ids each unlisting takes."""

    unlisted: list[int]

    async def unlist(self, tenant: str, kind: str, ids: list[str]) -> None:
        self.unlisted.append(len(ids))
        await super().unlist(tenant, kind, ids)


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


def _oldest_first(after: str | None) -> routes.Page:
    return routes.Page("files", after, 9, routes.MAX_FILES_LISTED, oldest_first=True)


def _request_for(store: BatchStore) -> Request:
    state = types.SimpleNamespace(door=types.SimpleNamespace(batches=store))
    return cast(Request, types.SimpleNamespace(app=types.SimpleNamespace(state=state)))
