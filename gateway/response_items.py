"""A stored response's input items (GET /v1/responses/{id}/input_items): the conversation it
followed, without its instructions (those of the responses it continues, then its own
input), as the Responses API's items, a page at a time; and stored responses' output items
as input items, where a body references them (`item_reference`)."""

from __future__ import annotations

from typing import Any

from gateway.response_store import RESPONSE_ID, ResponseStore
from gateway.response_tools import CALL_ITEM_ID, call_item
from schemas.errors import ErrorCode, LlmqError
from schemas.request import MAX_MESSAGES
from schemas.tools import ToolCall

MAX_LIMIT = 100
"""OpenAI's bound on the items of one page."""
ORDERS = ("asc", "desc")
REFERENCE = "item_reference"
"""The input item that names a stored output item by its id."""
MESSAGE_ID = "msg_"
"""How the id of a response's message begins: `msg_<cid>` of response `resp_<cid>`."""


async def referenced(store: ResponseStore, tenant: str, data: object) -> object:
    """The body with each `item_reference` input item replaced by the tenant's stored output
    item it names (the Vercel AI SDK sends earlier answers so while `store` is on): an id
    `msg_<cid>` names the message of response `resp_<cid>`, `fc_<cid>_<n>` its nth call, any
    other (an older door's `fc_...`, which names no response) an item of a response that
    another reference names; one of the response `previous_response_id` continues is left
    out (the conversation holds it). LlmqError (400, param `input[i].id`) for an id naming
    no such item."""
    given = data.get("input") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(given, list):
        return data
    ids = {
        index: item.get("id")
        for index, item in enumerate(given)
        if isinstance(item, dict) and item.get("type") == REFERENCE
    }
    named = {r for i in ids.values() if isinstance(i, str) and (r := _response_of(i))}
    if len(named) > MAX_MESSAGES:  # each adds a message: refused once read, so fetch none
        why = f"input references more than the {MAX_MESSAGES} messages a request holds"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="input")
    outputs = await store.outputs(tenant, sorted(named))
    found = {item["id"]: item for items in outputs.values() if items for item in items}
    previous = data.get("previous_response_id")
    continued = outputs.get(previous) if isinstance(previous, str) else None
    shown = {item["id"] for item in continued or []}  # in the conversation continued already
    items = list(given)
    for index, item_id in ids.items():
        if item_id in shown:
            items[index] = None
        elif not isinstance(item_id, str) or item_id not in found:
            why = (
                f"no stored item {item_id!r:.80} for this tenant: an item_reference names an "
                "output item of a stored response by its id (msg_..., a call's fc_...); a "
                "response answered with store false, deleted or past its retention is not stored"
            )
            raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"input[{index}].id")
        else:
            items[index] = found[item_id]
    return {**data, "input": [item for item in items if item is not None]} if ids else data


def _response_of(item_id: str) -> str | None:
    """The response an output item's id names: `resp_<cid>` of its message `msg_<cid>` or its
    call `fc_<cid>_<n>`; None for an older door's call, `fc_<the call's digest>`."""
    if item_id.startswith(MESSAGE_ID):
        return f"{RESPONSE_ID}{item_id.removeprefix(MESSAGE_ID)}"
    named, _, number = item_id.removeprefix(CALL_ITEM_ID).rpartition("_")
    called = item_id.startswith(CALL_ITEM_ID) and named and number.isdigit()
    return f"{RESPONSE_ID}{named}" if called else None


def input_items(response_id: str, conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages a response followed as items, oldest first: messages of text,
    an assistant's calls as `function_call` items (after its text, if any), and the tool
    messages as `function_call_output` items. Each item's id is the response's and its
    place, so a page names where the next one starts."""
    items: list[dict[str, Any]] = []
    for message in conversation:
        calls = message.get("tool_calls") or []
        text = message.get("content")
        if message["role"] == "tool":
            items.append(_output(message))
        elif text or not calls:
            items.append(_message(message["role"], text or ""))
        items += [_call(call) for call in calls]
    name = response_id.removeprefix(RESPONSE_ID)
    return [{**item, "id": f"{item['id']}_{name}_{i}"} for i, item in enumerate(items)]


def page(
    items: list[dict[str, Any]], *, after: str | None, limit: int, order: str
) -> dict[str, Any]:
    """The list object of up to `limit` items in `order` (newest first: "desc", OpenAI's
    default), from the one after the item `after`; LlmqError (400) for a bound, an order
    or an item it does not know."""
    if not 1 <= limit <= MAX_LIMIT:
        why = f"limit must be an integer from 1 to {MAX_LIMIT}"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="limit")
    if order not in ORDERS:
        why = f"order must be one of {', '.join(ORDERS)}"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="order")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            why = f"after names no input item of this response: {after!r}"
            raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="after")
        start = ids.index(after) + 1
    data = ordered[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(ordered),
    }


def _message(role: str, text: str) -> dict[str, Any]:
    if role == "assistant":
        part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
    else:
        part = {"type": "input_text", "text": text}
    return {"type": "message", "id": "msg", "role": role, "status": "completed", "content": [part]}


def _call(call: dict[str, Any]) -> dict[str, Any]:
    return call_item(ToolCall.model_validate(call), "fc", "completed")


def _output(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function_call_output",
        "id": "fco",
        "call_id": message["tool_call_id"],
        "output": message["content"],
        "status": "completed",
    }
