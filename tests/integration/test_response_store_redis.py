"""The Responses API's store on a Redis of its own: deleting a response forgets its request's
result too, which GET /v1/results/{id} read on for a day after the delete."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from gateway.response_store import Kept, ResponseStore
from schemas.names import result_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_a_deleted_response_leaves_no_result_of_its_request(redis_port: int) -> None:
    async def run() -> tuple[bool, bool, int, bool]:
        client = aioredis.Redis(port=redis_port)
        try:
            store = ResponseStore(client, 60)
            await store.keep("acme", Kept({"id": "resp_c-1", "output": []}, []))
            await client.set(result_key("acme", "c-1"), "{}")  # as the stream processor stores it
            await client.set(result_key("other", "c-1"), "{}")  # another tenant's, same id
            deleted = await store.delete("acme", "resp_c-1")
            again = await store.delete("acme", "resp_c-1")
            left = await client.exists(result_key("acme", "c-1"), result_key("other", "c-1"))
            return deleted, again, left, await store.get("acme", "resp_c-1") is None
        finally:
            await client.aclose()

    assert asyncio.run(run()) == (True, False, 1, True)
