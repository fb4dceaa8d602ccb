"""What a work item writes of its request (schemas.tools.Contract): no field at None, so that
a record that uses no newer field reads the same to an older reader, which refuses fields it
does not know (a rolling upgrade); while fingerprints stay what they were."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.fingerprint import fingerprint
from schemas.request import InferenceRequest
from schemas.route import Route
from schemas.work import WorkItem

pytestmark = pytest.mark.timeout(30)

TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
}
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "out",
        "description": "d",
        "schema": {"type": "object"},
        "strict": True,
    },
}
HI = [{"role": "user", "content": "hi"}]
REQUESTS: dict[str, dict[str, Any]] = {
    "plain": {"correlation_id": "c1", "body": {"messages": HI}},
    "sampling": {
        "correlation_id": "c2",
        "tenant": "acme",
        "model": "m",
        "deadline": 1900000000.5,
        "body": {
            "messages": [{"role": "system", "content": "be brief"}, *HI],
            "max_tokens": 32,
            "temperature": 0.0,
            "top_p": 0.9,
            "stop": "\n",
            "seed": 7,
            "logprobs": True,
            "top_logprobs": 3,
            "logit_bias": {"50": -100, "7": 2.5},
            "top_k": 40,
            "min_p": 0.1,
            "repetition_penalty": 1.2,
            "min_tokens": 2,
            "ignore_eos": True,
        },
    },
    "tools": {
        "correlation_id": "c3",
        "body": {
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
            ],
            "tools": [TOOL, {"function": {"name": "now"}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
            "parallel_tool_calls": False,
        },
    },
    "json_schema": {
        "correlation_id": "c4",
        "body": {
            "messages": [{"role": "user", "content": "json"}],
            "response_format": SCHEMA_FORMAT,
        },
    },
    "raw_prompt": {
        "correlation_id": "c5",
        "body": {"messages": [{"role": "user", "content": "Once"}], "raw_prompt": True},
    },
}
FINGERPRINTS = {
    "plain": "9946ce12ae94dd535215ccd370a8e859997994efc07d3fd0d987ec0b907aea09",
    "sampling": "5375cb62742e24cca2d73ad5b1fdfda907b5ae85a0796f51db816d1d5b418339",
    # Changed once since, on purpose: tools as written, their properties' order kept.
    "tools": "d002567147546878af15e046395036c0ea2771117f98cd411da0740dba1186f4",
    "json_schema": "e1929b13c5fa164a9ca27657b2583e23636ad1f1dc3d199d25681363c27061de",
    "raw_prompt": "0f4c8ec651d60d3fa1ee2d40e47e4649811a7a94d424076096a0f6cacd55db2a",
}
"""As llmq computed them before requests were written without their fields at None: a
changed fingerprint misses every cached answer, and coalesces nothing with an older copy."""


def _work(name: str) -> WorkItem:
    request = InferenceRequest.model_validate(REQUESTS[name])
    route = Route(requested="m", chain=["m"])
    return WorkItem(request=request, model="m", fingerprint=FINGERPRINTS[name], route=route)


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_fingerprints_stay_what_they_were(name: str) -> None:
    request = InferenceRequest.model_validate(REQUESTS[name])
    assert fingerprint(request, "m") == FINGERPRINTS[name]


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_a_work_item_reads_back_as_it_was_written(name: str) -> None:
    work = _work(name)
    assert WorkItem.model_validate_json(work.model_dump_json()) == work


def test_a_default_work_item_writes_only_these_fields() -> None:
    """A field added to the request that is always written (a default other than None)
    makes every record unreadable to the version before it: this test names it (the body's
    own fields: test_request.test_fields_left_at_none_stay_out_of_the_record)."""
    written = json.loads(_work("plain").model_dump_json())["request"]
    assert set(written) == {
        "schema_version",
        "correlation_id",
        "tenant",
        "lane",
        "reply_to",
        "cache",
        "created_at",
        "body",
    }
    assert [set(m) for m in written["body"]["messages"]] == [{"role", "content"}]


def test_a_tool_and_a_schema_write_only_what_they_were_given() -> None:
    tools = {
        "correlation_id": "c6",
        "body": {"messages": HI, "tools": [{"function": {"name": "f"}}]},
    }
    body = json.loads(InferenceRequest.model_validate(tools).model_dump_json())["body"]
    assert body["tools"] == [{"type": "function", "function": {"name": "f"}}]
    bare = {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}}}
    formatted = {"correlation_id": "c7", "body": {"messages": HI, "response_format": bare}}
    body = json.loads(InferenceRequest.model_validate(formatted).model_dump_json())["body"]
    assert body["response_format"] == bare
    written = json.loads(_work("json_schema").model_dump_json())["request"]["body"]
    assert written["response_format"] == SCHEMA_FORMAT  # what is given is written
