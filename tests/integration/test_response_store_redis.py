"""The Responses API's store on a Redis of its own: deleting a response forgets its request's
result too, which GET /v1/results/{id} read on for a day after the delete."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.response_store import Kept, ResponseStore
from schemas.names import response_key, response_output_key, result_key

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


def test_outputs_are_read_without_the_conversation_and_from_older_stores(
    redis_port: int,
) -> None:
    """An item_reference reads a stored response's output items alone (turn n of a chat that
    references every earlier answer read them all whole); one stored by an older front door,
    without its outputs apart, is read whole."""
    item = {"id": "msg_c-1", "type": "message", "role": "assistant", "content": []}
    conversation = [{"role": "user", "content": "x" * 10_000}]

    async def run() -> tuple[dict[str, Any], int, int]:
        client = aioredis.Redis(port=redis_port)
        try:
            store = ResponseStore(client, 60)
            await store.keep("acme", Kept({"id": "resp_c-1", "output": [item]}, conversation))
            older = {"response": {"id": "resp_c-2", "output": [item]}, "messages": []}
            await client.set(response_key("acme", "resp_c-2"), json.dumps(older))
            found = await store.outputs("acme", ["resp_c-1", "resp_c-2", "resp_gone"])
            apart = await client.strlen(response_output_key("acme", "resp_c-1"))
            await store.delete("acme", "resp_c-1")
            return found, apart, await client.exists(response_output_key("acme", "resp_c-1"))
        finally:
            await client.aclose()

    found, apart, left = asyncio.run(run())
    assert found == {"resp_c-1": [item], "resp_c-2": [item], "resp_gone": None}
    assert apart < 200, "the output items alone"
    assert left == 0, "deleted with the response"


def test_output_items_whose_response_an_older_door_deleted_are_not_served(
    redis_port: int,
) -> None:
    """An older front door deletes the response key alone: the output items it leaves answer
    no reference, and a delete at a newer door still removes them."""
    item = {"id": "msg_c-1", "type": "message", "role": "assistant", "content": []}

    async def run() -> tuple[dict[str, Any], bool, int]:
        client = aioredis.Redis(port=redis_port)
        try:
            store = ResponseStore(client, 60)
            await store.keep("acme", Kept({"id": "resp_c-1", "output": [item]}, []))
            await client.delete(response_key("acme", "resp_c-1"))  # as an older door deletes
            found = await store.outputs("acme", ["resp_c-1"])
            deleted = await store.delete("acme", "resp_c-1")
            return found, deleted, await client.exists(response_output_key("acme", "resp_c-1"))
        finally:
            await client.aclose()

    assert asyncio.run(run()) == ({"resp_c-1": None}, False, 0)
