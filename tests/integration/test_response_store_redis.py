"""The Responses API's store on a Redis of its own: deleting a response forgets its request's
result too, which GET /v1/results/{id} read on for a day after the delete; a conversation is
stored a turn at each response (whole at each, it took n squared bytes), read back as it was
sent, kept as long as its newest response, and refused where a response of it was deleted."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.app import build
from gateway.response_store import Kept, ResponseStore, TurnGoneError
from gateway.responses import read_response_call, response_of
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.names import response_key, response_output_key, response_turn_key, result_key
from schemas.request import DEFAULT_TENANT, ChatMessage
from schemas.result import ChatCompletion, Choice, InferenceResult, Usage
from schemas.tenants import TenantPolicy

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
    no reference, and a delete at a newer door still removes them (with the turn it left,
    and says so)."""
    item = {"id": "msg_c-1", "type": "message", "role": "assistant", "content": []}

    async def run() -> tuple[dict[str, Any], bool, int]:
        client = aioredis.Redis(port=redis_port)
        try:
            store = ResponseStore(client, 60)
            await store.keep("acme", Kept({"id": "resp_c-1", "output": [item]}, []))
            await client.delete(response_key("acme", "resp_c-1"))  # as an older door deletes
            found = await store.outputs("acme", ["resp_c-1"])
            deleted = await store.delete("acme", "resp_c-1")
            left = response_output_key("acme", "resp_c-1"), response_turn_key("acme", "resp_c-1")
            return found, deleted, await client.exists(*left)
        finally:
            await client.aclose()

    assert asyncio.run(run()) == ({"resp_c-1": None}, True, 0)


CATALOG = Catalog.builtin()
TENANT = DEFAULT_TENANT
"""The front door's tenant where it has no keys."""


async def _answered(
    store: ResponseStore, previous: Kept | None, given: object, answer: str
) -> Kept:
    """A response to the input `given`, continuing `previous` (None: none), answered with
    `answer` and stored, as the route reads, answers and stores it: what it keeps."""
    data: dict[str, Any] = {"model": CATALOG.default, "input": given}
    continued: dict[str, Any] = {}
    if previous is not None:
        data["previous_response_id"] = previous.response["id"]
        continued = {"history": previous.messages, "chain": previous.turns}
    call = read_response_call(
        data, tenant=TENANT, lane=None, catalog=CATALOG, timeout_s=60, **continued
    )
    choice = Choice(message=ChatMessage(role="assistant", content=answer), finish_reason="stop")
    usage = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    completion = ChatCompletion(id="x", created=1, model="m", choices=[choice], usage=usage)
    cid = call.request.correlation_id
    result = InferenceResult(correlation_id=cid, tenant=TENANT, status="ok", response=completion)
    kept = call.kept(response_of(call.echo, [result]))
    await store.keep(TENANT, kept)
    return kept


def _joining(turn: int, question: str) -> list[dict[str, Any]]:
    """An input whose function call joins the answer it continues (that message changes),
    then the call's output and a question."""
    call_id = f"call_{turn}"
    return [
        {"type": "function_call", "call_id": call_id, "name": "ping", "arguments": "{}"},
        {"type": "function_call_output", "call_id": call_id, "output": "up"},
        {"role": "user", "content": question},
    ]


async def _stored_bytes(client: aioredis.Redis) -> int:
    """The bytes of every stored response's keys (they are all strings)."""
    keys = [key async for key in client.scan_iter(match="llmq:response*")]
    return sum([await client.strlen(key) for key in keys])


def test_a_conversation_is_stored_a_turn_at_each_response_and_read_back_as_sent(
    redis_port: int,
) -> None:
    """50 turns of 700 characters each way, some of whose input's calls join the answer
    before them: stored whole at each response, the bytes grew as the turns squared (27
    times the conversation's here, 52 times at 100 turns), a turn at each it is 3.6 times
    (each answer is in its object, its output items and its turn; each response names those
    it continues); each response's conversation reads back as it was sent."""
    turns = 50

    async def run() -> tuple[list[Kept], list[Kept | None], int]:
        client = aioredis.Redis(port=redis_port)
        try:
            await client.flushall()
            store = ResponseStore(client, 60)
            kept: list[Kept] = []
            previous = None
            for turn in range(turns):
                question = f"{turn} " + "q" * 700
                given = _joining(turn, question) if turn % 5 == 4 else question
                previous = await _answered(store, previous, given, f"{turn} " + "a" * 700)
                kept.append(previous)
            read = [await store.get(TENANT, k.response["id"]) for k in kept]
            return kept, read, await _stored_bytes(client)
        finally:
            await client.aclose()

    kept, read, stored = asyncio.run(run())
    assert [r.messages if r else None for r in read] == [k.messages for k in kept]
    assert any(k.start < len(p.messages) for p, k in itertools.pairwise(kept)), "calls joined"
    conversation = len(json.dumps(kept[-1].messages))
    assert conversation > turns * 1400
    assert stored < 4 * conversation, f"{stored} bytes for a conversation of {conversation}"


def test_a_response_continuing_a_deleted_one_is_fetched_but_not_continued(
    redis_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting a response forgets its turn: a later response of its conversation is still
    fetched (its object alone), but continuing it or listing its input items is a 404 that
    says so; one before it is continued as ever."""
    app = build(GatewaySettings(), CATALOG, TenantPolicy.load(None))

    async def run() -> tuple[list[Kept], list[httpx.Response], Kept, int]:
        client = aioredis.Redis(port=redis_port)
        store = ResponseStore(client, 60)
        monkeypatch.setattr(app.state.door, "responses", store)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        http = httpx.AsyncClient(transport=transport, base_url="http://t")
        try:
            first = await _answered(store, None, "One?", "1")
            middle = await _answered(store, first, "Two?", "2")
            last = await _answered(store, middle, "Three?", "3")
            at = f"/v1/responses/{last.response['id']}"
            asked = {"model": CATALOG.default, "input": "Four?"}
            answers = [
                await http.delete(f"/v1/responses/{middle.response['id']}"),
                await http.get(at),
                await http.get(f"{at}/input_items"),
                await http.post(
                    "/v1/responses", json={**asked, "previous_response_id": last.response["id"]}
                ),
            ]
            earlier = await store.get(TENANT, first.response["id"])
            assert earlier is not None
            after = await _answered(store, earlier, "Two again?", "2")
            gone = await client.exists(response_turn_key(TENANT, middle.response["id"]))
            return [first, middle, last], answers, after, gone
        finally:
            await http.aclose()
            await client.aclose()

    (first, middle, last), answers, after, gone = asyncio.run(run())
    deleted, fetched, listed, continued = answers
    assert (deleted.status_code, fetched.status_code) == (200, 200)
    assert fetched.json() == last.response
    why = f"response {middle.response['id']}, which it continues, was deleted"
    for refused in (listed, continued):
        assert refused.status_code == 404 and why in refused.json()["error"]["message"]
    assert continued.json()["error"]["param"] == "previous_response_id"
    assert gone == 0 and after.messages[:-2] == first.messages


def test_a_response_an_older_door_stored_whole_is_read_and_continued(redis_port: int) -> None:
    """An older front door stored each response with its whole conversation and no turns:
    it reads whole, and a response continuing it keeps that conversation as its own turn."""
    older = [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "1"}]
    item = {"id": "msg_c-0", "type": "message", "role": "assistant", "content": []}
    response = {"id": "resp_c-0", "output": [item]}

    async def run() -> tuple[Kept | None, Kept, Kept, Kept | None, Kept | None]:
        client = aioredis.Redis(port=redis_port)
        try:
            store = ResponseStore(client, 60)
            value = json.dumps({"response": response, "messages": older})
            await client.set(response_key(TENANT, "resp_c-0"), value)
            read = await store.get(TENANT, "resp_c-0")
            assert read is not None
            second = await _answered(store, read, "Two?", "2")
            third = await _answered(store, second, _joining(3, "Three?"), "3")
            return (
                read,
                second,
                third,
                await store.get(TENANT, second.response["id"]),
                await store.get(TENANT, third.response["id"]),
            )
        finally:
            await client.aclose()

    read, second, third, second_read, third_read = asyncio.run(run())
    assert read == Kept(response, older)
    assert second.messages[:2] == older and second_read == second
    assert third_read == third and third.turns == (second.response["id"], third.response["id"])


def test_continuing_a_response_keeps_it_whole_as_long_as_the_new_one(
    redis_port: int,
) -> None:
    """The responses a response continues live as long as it, each whole: their turns,
    objects and output items renewed to the retention time (the turns alone were, and a
    response's object went past its retention while its prompt and answer stayed)."""

    async def run() -> list[int]:
        client = aioredis.Redis(port=redis_port)
        try:
            store = ResponseStore(client, 60)
            first = await _answered(store, None, "One?", "1")
            second = await _answered(store, first, "Two?", "2")
            keys = [
                key(TENANT, r.response["id"])
                for r in (first, second)
                for key in (response_turn_key, response_key, response_output_key)
            ]
            for key_name in keys:
                await client.expire(key_name, 5)
            continued = await store.get(TENANT, second.response["id"])
            await _answered(store, continued, "Three?", "3")
            return [await client.ttl(key_name) for key_name in keys]
        finally:
            await client.aclose()

    ttls = asyncio.run(run())
    assert all(ttl > 50 for ttl in ttls), ttls


def test_a_continued_response_past_its_own_retention_is_still_deleted_with_its_turn(
    redis_port: int,
) -> None:
    """Retention 3 s: r1 stored at 0 s, continued by r2 at 2 s; at 3.5 s r1 is past its own
    retention but its turn is r2's conversation: deleting it is answered (it was a 404 while
    its prompt and answer stayed in Redis, served to r2's continuations) and takes its turn,
    so r2 is no longer continued."""

    async def run() -> tuple[bool, bool, int, bool]:
        client = aioredis.Redis(port=redis_port)
        try:
            async with asyncio.timeout(10):
                store = ResponseStore(client, 3)
                first = await _answered(store, None, "My secret is 1234.", "Noted.")
                await asyncio.sleep(2)
                second = await _answered(store, first, "Two?", "2")
                await asyncio.sleep(1.5)
                first_id = first.response["id"]
                fetched = await store.response(TENANT, first_id) is not None
                deleted = await store.delete(TENANT, first_id)
                left = await client.exists(
                    response_turn_key(TENANT, first_id), response_output_key(TENANT, first_id)
                )
                try:
                    await store.get(TENANT, second.response["id"])
                except TurnGoneError:
                    return fetched, deleted, left, True
                return fetched, deleted, left, False
        finally:
            await client.aclose()

    assert asyncio.run(run()) == (True, True, 0, True)


def test_a_continuation_whose_earlier_turn_went_meanwhile_keeps_the_whole_conversation(
    redis_port: int,
) -> None:
    """A turn past its retention while its continuation was generated left that one
    refused for good, as if a response had been deleted."""

    async def run() -> tuple[Kept, Kept | None]:
        client = aioredis.Redis(port=redis_port)
        try:
            store = ResponseStore(client, 60)
            first = await _answered(store, None, "One?", "1")
            second = await _answered(store, first, "Two?", "2")
            continued = await store.get(TENANT, second.response["id"])
            await client.delete(response_turn_key(TENANT, first.response["id"]))  # expired
            third = await _answered(store, continued, "Three?", "3")
            return third, await store.get(TENANT, third.response["id"])
        finally:
            await client.aclose()

    third, read = asyncio.run(run())
    assert read is not None and read.messages == third.messages
    assert read.turns == (third.response["id"],)


def test_deleting_a_response_whose_object_an_older_door_let_go_deletes_its_turn(
    redis_port: int,
) -> None:
    """An older door renewed the turns of the responses continued, not their objects: such a
    turn, its object past its retention, outlived what the API could delete (the delete was
    a 404 and left it). It goes with a delete that says so; the conversations holding it are
    continued no more, as after any delete."""

    async def run() -> tuple[bool, int, bool]:
        client = aioredis.Redis(port=redis_port)
        try:
            store = ResponseStore(client, 60)
            first = await _answered(store, None, "One?", "1")
            second = await _answered(store, first, "Two?", "2")
            first_id = first.response["id"]
            await client.delete(response_key(TENANT, first_id))  # past its retention
            deleted = await store.delete(TENANT, first_id)
            left = await client.exists(response_turn_key(TENANT, first_id))
            try:
                await store.get(TENANT, second.response["id"])
            except TurnGoneError:
                return deleted, left, True
            return deleted, left, False
        finally:
            await client.aclose()

    assert asyncio.run(run()) == (True, 0, True)
