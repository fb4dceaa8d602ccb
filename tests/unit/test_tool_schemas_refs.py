"""Tool calls as a request offers them and a stream opens them: a function's schema with
local refs keeps them resolving within it under "required", two functions of one name and
a parallel_tool_calls that is no bool are refused at the door, and a streamed answer of
calls opens with null content, as a whole one has it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from gateway.openai import Chunks, read_call
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatBody
from schemas.tools import (
    NamedFunction,
    NamedToolChoice,
    Tool,
    ToolCall,
    call_grammar,
    output_schema,
)
from schemas.work import WorkItem
from streams.admit import admit
from streams.salvage import Rejection

ADDR = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WITH_DEFS = {
    "type": "object",
    "properties": {"addr": {"$ref": "#/$defs/Addr"}, "at": {"$ref": "#/definitions/Zone"}},
    "$defs": {"Addr": ADDR},
    "definitions": {"Zone": {"enum": ["UTC", "CET"]}},
}
TREE = {"type": "object", "properties": {"name": {"type": "string"}, "child": {"$ref": "#"}}}
REMOTE = {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}
ASK = [{"role": "user", "content": "Hi"}]


def _tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def _resolved(root: Any, ref: str) -> Any:
    """What a local ref points at in `root` (a JSON pointer, as the engine reads it)."""
    assert ref == "#" or ref.startswith("#/"), ref
    for part in ref[2:].split("/") if ref != "#" else []:
        root = root[part.replace("~1", "/").replace("~0", "~")]
    return root


def _refs(schema: Any) -> list[str]:
    if isinstance(schema, list):
        return [ref for item in schema for ref in _refs(item)]
    if not isinstance(schema, dict):
        return []
    own = [schema["$ref"]] if isinstance(schema.get("$ref"), str) else []
    return own + [ref for value in schema.values() for ref in _refs(value)]


def test_a_functions_local_refs_resolve_within_it_under_required() -> None:
    tools = [Tool.model_validate(_tool(n, p)) for n, p in [("f", WITH_DEFS), ("tree", TREE)]]
    calls = output_schema(tools, "required", None)
    assert calls is not None
    held = [c["properties"]["parameters"] for c in calls["items"]["anyOf"]]
    f, tree = (_resolved(calls, p["$ref"]) for p in held)
    assert _resolved(calls, _refs(f)[0]) == ADDR
    assert _resolved(calls, _refs(f)[1]) == {"enum": ["UTC", "CET"]}
    assert _resolved(calls, _refs(tree)[0]) is tree  # "#": the function's own schema
    for schema in (WITH_DEFS, TREE):  # a named function's, and "auto"'s: each its own root
        tool = Tool.model_validate(_tool("f", schema))
        named = NamedToolChoice(function=NamedFunction(name="f"))
        assert output_schema([tool], named, None) == schema
        assert json.dumps(schema)[1:] in call_grammar([tool], None)


def test_a_schema_without_local_refs_is_held_inline() -> None:
    tools = [Tool.model_validate(_tool("a", REMOTE)), Tool.model_validate(_tool("ping"))]
    calls = output_schema(tools, "required", False)
    assert calls is not None and "$defs" not in calls
    held = [c["properties"]["parameters"] for c in calls["items"]["anyOf"]]
    assert held == [REMOTE, {"type": "object", "properties": {}}]  # a remote ref as it is


def _read(**body: Any) -> Any:
    data = {"model": "smollm2-135m", "messages": ASK, **body}
    return read_call(
        data, tenant="acme", lane="interactive", catalog=Catalog.builtin(), timeout_s=60
    )


def _refused(**body: Any) -> LlmqError:
    with pytest.raises(LlmqError) as caught:
        _read(**body)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    return caught.value


def _admitted(tools: list[dict[str, Any]]) -> WorkItem | Rejection:
    body = {"model": "smollm2-135m", "messages": ASK, "tools": tools, "tool_choice": "auto"}
    return admit(json.dumps({"correlation_id": "c-1", "body": body}).encode(), Catalog.builtin())


def test_two_functions_of_one_name_are_refused_at_admission() -> None:
    twice = [_tool("f", TREE), _tool("g"), _tool("f")]
    refused = _admitted(twice)
    assert isinstance(refused, Rejection) and refused.correlation_id == "c-1"
    assert refused.error.code is ErrorCode.INVALID_REQUEST
    assert refused.error.message == "tools offer two functions named 'f'"
    assert isinstance(_admitted(twice[:2]), WorkItem)
    # Not in the schema: a record admitted before this check still reads, at a worker too.
    assert ChatBody.model_validate({"messages": ASK, "tools": twice}).tools is not None


@pytest.mark.parametrize("given", ["yes", 1, 0, "true"])
def test_parallel_tool_calls_that_is_no_bool_is_refused(given: Any) -> None:
    refused = _refused(tools=[_tool("g")], tool_choice="required", parallel_tool_calls=given)
    assert refused.param == "parallel_tool_calls"


@pytest.mark.parametrize("given", [True, False, None])
def test_parallel_tool_calls_as_the_sdk_sends_it_is_read(given: bool | None) -> None:
    call = _read(tools=[_tool("g")], tool_choice="required", parallel_tool_calls=given)
    body = call.request.body
    assert body.parallel_tool_calls is given
    assert ChatBody.model_validate_json(body.model_dump_json()) == body  # as a record reads


def test_a_streamed_answer_of_calls_opens_with_null_content() -> None:
    body = ChatBody.model_validate(
        {"messages": ASK, "tools": [_tool("g")], "tool_choice": "required"}
    )
    chunks = Chunks("c1", 7, "m", False, body)
    role = chunks.role()
    assert role is not None and role["choices"][0]["delta"] == {
        "role": "assistant",
        "content": None,
    }
    call = ToolCall.model_validate({"id": "call_1", "function": {"name": "g", "arguments": "{}"}})
    state = ChatCompletionStreamState()
    for chunk in (role, chunks.calls([call]), chunks.finish("tool_calls")):
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    message = state.get_final_completion().choices[0].message
    assert message.content is None and [c.id for c in message.tool_calls or []] == ["call_1"]
    text = ChatBody.model_validate({"messages": ASK, "tools": [_tool("g")], "tool_choice": "none"})
    for chunks in (Chunks("c1", 7, "m", False), Chunks("c1", 7, "m", False, text)):
        opened = chunks.role()
        assert opened is not None and opened["choices"][0]["delta"]["content"] == ""
