"""The Batch API's files against a real redis-server of this module's own: a bad or deleted
input file fails its batch, upload limits, what is kept how long, and listings."""

from __future__ import annotations

import io
import json
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from fastapi import Request
from redis.exceptions import ResponseError
from starlette.datastructures import FormData, UploadFile

from gateway.batch import routes
from gateway.batch.runner import Runner
from gateway.batch.store import (
    GONE_S,
    MAX_BLANK_LINES,
    MAX_FILE_LINES,
    MAX_LINE_BYTES,
    BatchStore,
)
from gateway.door import ApiError
from schemas.errors import LlmqError
from schemas.names import batch_keys, file_keys, tenant_index_key
from tests.integration.batch_inputs import CATALOG, TENANT, Recorder, batch, chunks, line
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]


def test_a_bad_file_fails_its_batch_naming_the_lines(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        runner = Runner(store, Recorder(), CATALOG, "door-1")
        other = json.loads(line(2))
        other["body"]["model"] = "auto"
        lines = [line(0), "{", line(0), json.dumps(other)]
        batch_id = await batch(store, lines)
        await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "failed"
        errors = json.loads(fields["errors"])
        assert [(e["code"], e["line"]) for e in errors][:3] == [
            ("mixed_models", None),
            ("invalid_json", 2),
            ("duplicate_custom_id", 3),
        ]

    run_async(redis_port, body)


def test_a_deleted_file_is_gone_whole_and_a_batch_made_on_it_fails(redis_port: int) -> None:
    """The front door refuses to delete a file an active batch reads; a batch made while its
    file was being deleted finds it gone."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        runner = Runner(store, Recorder(), CATALOG, "door-1")
        batch_id = await batch(store, [line(0), line(1)])
        fields = await store.batch(batch_id)
        assert fields is not None
        file_id = fields["input_file_id"]
        assert await store.readers(file_id) == [(batch_id, "validating")]
        meta = await store.file(file_id, TENANT)
        assert meta is not None
        unlinked, deleted = await _calls(client, "unlink"), await _calls(client, "del")
        await store.delete_file(meta)
        assert await client.keys("llmq:file:*") == []
        # Its lines (up to 200 MB) are freed apart from Redis's loop, not while it waits.
        assert await _calls(client, "unlink") > unlinked and await _calls(client, "del") == deleted
        listing = await routes._listed(
            _request_for(store), TENANT, routes.Page("files", None, 9, 9)
        )
        assert listing["data"] == [] and await store.listed(TENANT, "files", None, 10) == []
        await runner.tick()
        fields = await store.batch(batch_id)
        assert fields is not None and fields["status"] == "failed"
        errors = json.loads(fields["errors"])
        assert [(e["code"], e["line"]) for e in errors] == [("missing_input_file", None)]
        assert file_id in errors[0]["message"]
        assert await store.readers(file_id) == []  # an ended batch leaves the active set

    run_async(redis_port, body)


async def _calls(client: aioredis.Redis, command: str) -> int:
    """How many times Redis ran `command` (INFO commandstats)."""
    stats: dict[str, dict[str, int]] = await client.info("commandstats")
    return stats.get(f"cmdstat_{command}", {}).get("calls", 0)


def test_uploads_past_openais_limits_are_refused_and_not_kept(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        many = "\n".join("{}" for _ in range(MAX_FILE_LINES + 1))
        with pytest.raises(LlmqError, match="line 50001 holds a request: past 50000 lines"):
            await store.create_file(TENANT, "big.jsonl", "batch", chunks(many, 65536))
        assert await client.keys("llmq:file:*") == []
        blank = "\n" * MAX_FILE_LINES + "{}"  # blank lines count: their numbers are walked
        with pytest.raises(LlmqError, match="past 50000 lines, blank ones counted"):
            await store.create_file(TENANT, "blank.jsonl", "batch", chunks(blank, 65536))
        assert await client.keys("llmq:file:*") == []
        kept = await store.create_file(TENANT, "b.jsonl", "batch", chunks(blank[1:], 65536))
        assert (kept["lines"], kept["requests"]) == (str(MAX_FILE_LINES), "1")
        # Blank lines at the end of a full file pass (an editor's), a flood of them does not.
        full = many[: -len("\n{}")] + "\n\n\n"
        kept = await store.create_file(TENANT, "full.jsonl", "batch", chunks(full, 65536))
        assert kept["requests"] == str(MAX_FILE_LINES)
        flood = "{}" + "\n" * (MAX_BLANK_LINES + 1)
        with pytest.raises(LlmqError, match=f"more than {MAX_BLANK_LINES} lines, blank ones too"):
            await store.create_file(TENANT, "flood.jsonl", "batch", chunks(flood, 65536))

    run_async(redis_port, body)


def test_a_line_past_the_line_limit_is_refused_naming_it_before_it_is_whole(
    redis_port: int,
) -> None:
    """A line longer than any request a record holds is refused as soon as it passes the
    limit: the rest of it is never read, nothing is kept; a line at the limit is kept."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        read: list[int] = []

        async def endless() -> AsyncIterator[bytes]:
            yield b"{}\n"
            while len(read) < 1000:  # a 1000 MiB line, were it read whole
                read.append(1)
                yield b"x" * (1 << 20)

        with pytest.raises(LlmqError, match=f"line 2 is longer than {MAX_LINE_BYTES} bytes"):
            await store.create_file(TENANT, "long.jsonl", "batch", endless())
        assert len(read) == MAX_LINE_BYTES // (1 << 20) + 1
        assert await client.keys("llmq:file:*") == []
        at_limit = "{}\n" + "x" * MAX_LINE_BYTES
        kept = await store.create_file(TENANT, "at.jsonl", "batch", chunks(at_limit, 1 << 20))
        assert [p async for p in store.pages(kept["id"], [1])] == [[(1, at_limit[3:].encode())]]
        crlf = at_limit + "\r\n{}"  # a CR before its newline is no part of the line
        kept = await store.create_file(TENANT, "crlf.jsonl", "batch", chunks(crlf, 1 << 20))
        assert [p async for p in store.pages(kept["id"], [1])] == [[(1, at_limit[3:].encode())]]
        past = at_limit + "x\n{}"  # the line ends within the chunk that takes it past
        with pytest.raises(LlmqError, match="line 2 is longer"):
            await store.create_file(TENANT, "past.jsonl", "batch", chunks(past, len(past)))

    run_async(redis_port, body)


def test_an_upload_with_a_line_past_the_limit_is_a_400_naming_it(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        data = b"{}\n{}\n" + b"x" * (MAX_LINE_BYTES + 1)
        form = FormData([("file", UploadFile(io.BytesIO(data))), ("purpose", "batch")])
        with pytest.raises(ApiError) as refused:
            await routes._keep(BatchStore(client, 3600), TENANT, form)
        assert refused.value.status == 400
        message = refused.value.body["error"]["message"]
        assert message.startswith(f"line 3 is longer than {MAX_LINE_BYTES} bytes"), message
        assert await client.keys("llmq:file:*") == []

    run_async(redis_port, body)


@pytest.mark.parametrize("landed", [False, True])
def test_an_upload_whose_fields_fail_leaves_no_lines_unless_they_landed(
    redis_port: int, monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    """Redis refusing the write of an upload's fields (OOM under noeviction aborts the
    transaction) left its lines, written page by page, for retention: no file's, unlisted,
    another copy at each of the SDK's retries. One whose write landed before the error (a
    reply that failed) keeps its file whole."""
    index = BatchStore._index

    def failing(pipe: Any, tenant: str, kind: str, object_id: str, until: int) -> None:
        index(pipe, tenant, kind, object_id, until)
        if landed:  # fails as it runs, after the rest of the transaction
            pipe.lpush(tenant_index_key(tenant, kind), "not a sorted set's")
        else:  # refused as it is queued, as OOM is: EXECABORT, nothing runs
            pipe.execute_command("NOSUCHCOMMAND")

    monkeypatch.setattr(BatchStore, "_index", staticmethod(failing))

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        text = "\n".join(line(n) for n in range(200))  # pages of lines written first
        with pytest.raises(ResponseError):
            await store.create_file(TENANT, "in.jsonl", "batch", chunks(text, 4096))
        kept = await client.keys("llmq:file:*")
        if not landed:
            assert kept == []
            return
        [file_id] = await client.zrange(tenant_index_key(TENANT, "files"), 0, -1)
        meta, lines = file_keys(file_id.decode())
        assert sorted(kept) == sorted([meta.encode(), lines.encode()])
        assert await client.hlen(lines) == 200  # type: ignore[misc]

    run_async(redis_port, body)


def test_a_batch_keeps_its_input_file_past_its_window(redis_port: int) -> None:
    """A file kept 60 s is kept, once a batch reads it, until the batch's expires_at and 60 s
    more, as the batch is: neither expires while the batch runs."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 60)
        batch_id = await batch(store, [line(0)], window_s=3600)
        fields = await store.batch(batch_id, TENANT)
        assert fields is not None
        until = int(float(fields["expires_at"])) + 60
        meta = await store.file(fields["input_file_id"], TENANT)
        assert meta is not None and int(meta["expires_at"]) == until
        for key in [*file_keys(meta["id"]), batch_keys(batch_id)["batch"]]:
            assert await client.expiretime(key) == until  # type: ignore[misc]
        await store.create_file(TENANT, "later.jsonl", "batch", chunks("x"))  # kept 60 s
        for kind in ("files", "batches"):  # as long as what they list
            assert await client.expiretime(tenant_index_key(TENANT, kind)) == until  # type: ignore[misc]

    run_async(redis_port, body)


def test_an_ended_batch_is_kept_past_its_expires_at_and_listed_as_long(redis_port: int) -> None:
    """finish keeps a batch retention past its expires_at (past its end, if it ended late),
    and its tenant's index of batches as long."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 60)
        index = tenant_index_key(TENANT, "batches")
        late = await batch(store, [line(0)], window_s=-30)  # its window ended 30 s ago
        before = int(time.time())
        await store.finish(late)
        kept = await client.expiretime(batch_keys(late)["batch"])  # type: ignore[misc]
        assert before + 60 <= kept <= int(time.time()) + 60
        assert await client.expiretime(index) == kept  # type: ignore[misc]
        batch_id = await batch(store, [line(0)], window_s=3600)
        fields = await store.batch(batch_id)
        assert fields is not None
        output = {"id": "file-output-x", "tenant": TENANT, "batch": batch_id, "part": "output"}
        await store.add_file(output, float(fields["expires_at"]))  # as the runner, just before
        await store.finish(batch_id)
        until = int(float(fields["expires_at"])) + 60
        assert await client.expiretime(batch_keys(batch_id)["batch"]) == until  # type: ignore[misc]
        assert await client.expiretime(index) == until  # type: ignore[misc]
        # Its output file goes with it: not a day before, while the batch still names it.
        output_meta = file_keys("file-output-x")[0]
        assert await client.expiretime(output_meta) == until  # type: ignore[misc]

    run_async(redis_port, body)


def test_a_listing_skips_expired_objects_and_drops_them_from_the_index(redis_port: int) -> None:
    """Expired batches among live ones: every page but the last is full, has_more says
    whether another live one follows, and the expired ids leave the tenant's index."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        made = [await batch(store, [line(0)]) for _ in range(12)]
        live = made[::-1][:1] + made[::-1][8:]  # the newest, and the four oldest
        for batch_id in made:
            if batch_id not in live:
                await client.delete(batch_keys(batch_id)["batch"])  # as if expired
        request = _request_for(store)
        shown: list[str] = []
        after = None
        for _ in range(len(live)):
            page = await routes._listed(request, TENANT, routes.Page("batches", after, 2, 100))
            shown += [b["id"] for b in page["data"]]
            assert page["last_id"] == shown[-1]
            assert page["has_more"] == (len(shown) < len(live)), page
            if not page["has_more"]:
                break
            assert len(page["data"]) == 2
            after = page["last_id"]
        assert shown == live
        index = await client.zrange(tenant_index_key(TENANT, "batches"), 0, -1)
        assert sorted(i.decode() for i in index) == sorted(live)

    run_async(redis_port, body)


def _request_for(store: BatchStore) -> Request:
    state = types.SimpleNamespace(door=types.SimpleNamespace(batches=store))
    return cast(Request, types.SimpleNamespace(app=types.SimpleNamespace(state=state)))


Between = Callable[[list[str], dict[str, Any]], Awaitable[None]]


async def _made(store: BatchStore, count: int) -> list[str]:
    """`count` input files of the tenant, oldest first."""
    return [
        (await store.create_file(TENANT, "in.jsonl", "batch", chunks("x")))["id"]
        for _ in range(count)
    ]


async def _delete_page_by_page(store: BatchStore, between: Between | None = None) -> list[str]:
    """Page the tenant's files two at a time, deleting each page's (then `between`, with the
    ids deleted so far and the page), to the end: the ids deleted, in order."""
    deleted: list[str] = []
    after = None
    while True:
        page = await routes._listed(_request_for(store), TENANT, routes.Page("files", after, 2, 9))
        for shown in page["data"]:
            await store.delete_file({"id": shown["id"], "tenant": TENANT})
            deleted.append(shown["id"])
        if between is not None:
            await between(deleted, page)
        if not page["has_more"]:
            return deleted
        after = page["last_id"]


def test_files_deleted_page_by_page_are_all_listed(redis_port: int) -> None:
    """An app deleting each page's files as it pages (the SDK's `for f in files.list():
    files.delete(f.id)`) goes on after a deleted id to the end, leaving no id behind."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        made = await _made(store, 7)
        assert await _delete_page_by_page(store) == made[::-1]
        page = await routes._listed(_request_for(store), TENANT, routes.Page("files", None, 2, 9))
        assert page["data"] == [] and not page["has_more"]
        assert await client.zcard(tenant_index_key(TENANT, "files")) == 0

    run_async(redis_port, body)


def test_a_listing_after_an_id_another_listing_dropped_goes_on_from_it(redis_port: int) -> None:
    """Two listers: an app pages its files and deletes each page's, while another listing of
    the tenant (a dashboard) drops the deleted ids from the index between its pages; the app
    still goes on to the end. An `after` that never was the tenant's is a 400 naming it."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        made = await _made(store, 7)

        async def another_listing(deleted: list[str], page: dict[str, Any]) -> None:
            other = await routes._listed(
                _request_for(store), TENANT, routes.Page("files", None, 9, 9)
            )
            assert [f["id"] for f in other["data"]] == made[-len(deleted) - 1 :: -1]
            assert await client.zscore(tenant_index_key(TENANT, "files"), page["last_id"]) is None

        deleted = await _delete_page_by_page(store, another_listing)
        assert deleted == made[::-1]
        gone = await client.keys(f"{tenant_index_key(TENANT, 'files')}:gone:*")
        assert gone and all(0 < t <= 2 * GONE_S for t in [await client.ttl(k) for k in gone])
        with pytest.raises(ApiError) as refused:
            await routes._listed(
                _request_for(store), TENANT, routes.Page("files", "file-never", 2, 9)
            )
        assert refused.value.status == 400
        assert "file-never" in refused.value.body["error"]["message"]

    run_async(redis_port, body)


def test_files_are_listed_oldest_first_and_by_purpose(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        inputs = [(await store.create_file(TENANT, "in.jsonl", "batch", chunks("x")))["id"]]
        fields = {"tenant": TENANT, "filename": "o.jsonl", "bytes": "1", "created_at": "0"}
        output = {"id": "file-out", "purpose": "batch_output", "batch": "b", "part": "output"}
        await store.add_file(fields | output, time.time())
        inputs.append((await store.create_file(TENANT, "in.jsonl", "batch", chunks("x")))["id"])

        async def listed(oldest_first: bool, purpose: str | None) -> list[str]:
            page = routes.Page("files", None, 9, 9, oldest_first, purpose)
            return [
                f["id"] for f in (await routes._listed(_request_for(store), TENANT, page))["data"]
            ]

        assert await listed(True, None) == [inputs[0], "file-out", inputs[1]]
        assert await listed(False, None) == [inputs[1], "file-out", inputs[0]]
        assert await listed(True, "batch") == inputs
        assert await listed(False, "batch_output") == ["file-out"]

    run_async(redis_port, body)
