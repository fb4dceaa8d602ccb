"""A stored response's input items (gateway.response_items): its conversation as the
Responses API's items, read with the SDK's own types, and paged as the SDK pages them."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import ResponseItemList

from gateway.response_items import input_items, page
from schemas.errors import ErrorCode, LlmqError

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
CONVERSATION: list[dict[str, Any]] = [
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue"},
    {"role": "user", "content": "What time is it?"},
    {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]},
    {"role": "assistant", "content": None, "tool_calls": [{**CALL, "id": "call_2"}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
]


def test_the_conversation_is_items_the_sdk_reads() -> None:
    items = input_items("resp_abc", CONVERSATION)
    listed = ResponseItemList.model_validate(page(items, after=None, limit=100, order="asc"))
    kinds = [(i.type, getattr(i, "role", None)) for i in listed.data]
    assert kinds == [
        ("message", "developer"),
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),  # an assistant's text, then its calls
        ("function_call", None),
        ("function_call", None),
        ("function_call_output", None),
    ]
    assert listed.data[2].content[0].text == "Blue"  # type: ignore[union-attr,index]
    assert [getattr(i, "call_id", None) for i in listed.data[5:]] == ["call_1", "call_2", "call_1"]
    assert listed.data[7].output == "12:00"  # type: ignore[union-attr]
    assert len({i.id for i in listed.data}) == 8 and not listed.has_more


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_follow_each_other_from_the_last_id(order: str) -> None:
    items = input_items("resp_abc", CONVERSATION)
    seen: list[dict[str, Any]] = []
    after = None
    while True:
        got = page(items, after=after, limit=3, order=order)
        seen += got["data"]
        assert (got["first_id"], got["last_id"]) == (got["data"][0]["id"], got["data"][-1]["id"])
        if not got["has_more"]:
            break
        after = got["last_id"]
    assert seen == (items if order == "asc" else items[::-1])


def test_a_bound_an_order_or_an_item_it_does_not_know_is_a_400() -> None:
    items = input_items("resp_abc", CONVERSATION)
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"limit": 0}, "limit must be an integer from 1 to 100"),
        ({"limit": 101}, "limit must be"),
        ({"order": "newest"}, "order must be one of asc, desc"),
        ({"after": "msg_x"}, "after names no input item of this response: 'msg_x'"),
    ]
    for asked, why in refusals:
        with pytest.raises(LlmqError) as refused:
            page(items, **{"after": None, "limit": 20, "order": "desc", **asked})
        assert refused.value.code is ErrorCode.INVALID_REQUEST
        assert why in refused.value.message
        assert refused.value.param == next(iter(asked)), "it was null"
    empty = page(input_items("resp_abc", []), after=None, limit=20, order="desc")
    assert (empty["data"], empty["first_id"], empty["has_more"]) == ([], None, False)
