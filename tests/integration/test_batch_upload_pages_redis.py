"""An upload's lines go to Redis a page at a time, and a page of long lines is written before
it holds PAGE_BYTES: uploads are left out of the front door's body bytes (spooled to disk),
so 64 long lines a page held 88 MB per upload."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway.batch.store import MAX_LINE_BYTES, PAGE_BYTES, BatchStore
from tests.integration.batch_inputs import TENANT, chunks
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_a_page_of_long_lines_is_written_before_it_holds_page_bytes(
    redis_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    pages: list[int] = []
    flush = BatchStore._flush

    async def recorded(self: BatchStore, key: str, page: dict[str, bytes]) -> None:
        pages.append(sum(map(len, page.values())))
        await flush(self, key, page)

    monkeypatch.setattr(BatchStore, "_flush", recorded)
    long_line = "x" * (MAX_LINE_BYTES - 1)

    async def body(client: aioredis.Redis) -> None:
        store = BatchStore(client, 3600)
        kept = await store.create_file(
            TENANT, "long.jsonl", "batch", chunks("\n".join([long_line] * 12), 1 << 20)
        )
        assert kept["requests"] == "12"

    run_async(redis_port, body)
    assert sum(pages) == 12 * (MAX_LINE_BYTES - 1), "every line written"
    assert len(pages) > 1 and max(pages) < PAGE_BYTES + MAX_LINE_BYTES
