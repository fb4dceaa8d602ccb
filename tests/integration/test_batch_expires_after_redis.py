"""What the Batch API keeps how long when an upload's `expires_after` or a batch's
`output_expires_after` asks, against a real redis-server of this module's own: the shorter of
it and retention, each file's expires_at what Redis really keeps, and an input file kept as
long as the batch that reads it however little its upload asked."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from gateway.batch.store import BatchStore
from schemas.names import batch_keys, file_keys
from tests.integration.batch_inputs import TENANT, batch, chunks, line
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]

HOUR, DAY = 3600, 24 * 3600


def test_an_upload_is_kept_its_expires_after_or_retention_if_shorter(redis_port: int) -> None:
    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, DAY)
        for asked, kept in ((HOUR, HOUR), (30 * DAY, DAY), (None, DAY)):
            meta = await store.create_file(TENANT, "in.jsonl", "batch", chunks(line(0)), asked)
            until = int(meta["created_at"]) + kept
            assert int(meta["expires_at"]) == until
            for key in file_keys(meta["id"]):
                assert await client.expiretime(key) == until  # type: ignore[misc]

    run_async(redis_port, body)


def test_a_batch_keeps_its_input_file_past_a_shorter_expires_after(redis_port: int) -> None:
    """A file asked kept an hour that a batch of a day reads is kept as the batch is."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, DAY)
        made = await store.batch(await batch(store, [line(0)], DAY, HOUR))
        assert made is not None
        until = int(float(made["expires_at"])) + DAY
        kept = await store.file(made["input_file_id"], TENANT)
        assert kept is not None and int(kept["expires_at"]) == until
        for key in file_keys(made["input_file_id"]):
            assert await client.expiretime(key) == until  # type: ignore[misc]

    run_async(redis_port, body)


def test_output_files_are_kept_their_output_expires_after_and_their_lines_as_long(
    redis_port: int,
) -> None:
    """The output file's `output_expires_after` counts from its creation, as OpenAI's; its
    lines (the batch's) go with it, not when the batch goes; the error file of a batch that
    asked nothing is kept as the batch, its lines as long."""

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 30 * DAY)
        short = await batch(store, [line(0)], window_s=DAY)
        plain = await batch(store, [line(0)], window_s=DAY)
        await store.update(short, output_expires_after_s=str(2 * HOUR))
        created = int(time.time())
        for batch_id, part in ((short, "output"), (plain, "errors")):
            await client.hset(batch_keys(batch_id)[part], "0", "{}")  # type: ignore[misc]
            fields = await store.batch(batch_id)
            assert fields is not None
            made = {
                "id": f"file-{part}-{batch_id}",
                "tenant": TENANT,
                "filename": f"{batch_id}_{part}.jsonl",
                "purpose": "batch_output",
                "bytes": "3",
                "created_at": str(created),
                "batch": batch_id,
                "part": part,
            }
            await store.add_file(made, float(fields["expires_at"]))  # as the runner, just before
            await store.finish(batch_id)
            kept_until = int(float(fields["expires_at"])) + 30 * DAY
            until = created + 2 * HOUR if batch_id == short else kept_until
            meta = await store.file(made["id"], TENANT)
            assert meta is not None and int(meta["expires_at"]) == until
            for key in (file_keys(made["id"])[0], batch_keys(batch_id)[part]):
                assert await client.expiretime(key) == until  # type: ignore[misc]
            assert await client.expiretime(batch_keys(batch_id)["batch"]) == kept_until  # type: ignore[misc]

    run_async(redis_port, body)
