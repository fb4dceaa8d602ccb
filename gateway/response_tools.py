"""Function tools of the Responses API on chat's: a body's `tools` and `tool_choice` as chat
fields, `function_call` and `function_call_output` input items as an assistant's calls and
tool messages, and an answer's calls as `function_call` output items (and back, to store)."""

from __future__ import annotations

import re
from typing import Any

from schemas.errors import ErrorCode, LlmqError
from schemas.tools import FUNCTION_NAME, MAX_ARGUMENTS_CHARS, MAX_CALL_ID_CHARS, ToolCall

FUNCTION_FIELDS = ("name", "description", "parameters", "strict")
"""A function tool's fields, flat in this API, under `function` in chat's."""
NAMED_CHOICE = '{"type": "function", "name": ...}'
"""A tool_choice naming a function, as this API takes it."""
CALL_ITEM_ID = "fc_"
"""How the id of a response's `function_call` item begins: `fc_<cid>_<n>`, its nth call
(call_item_id)."""


def chat_tools(data: dict[str, Any]) -> dict[str, Any]:
    """The body's tools, tool_choice and parallel_tool_calls as chat's fields."""
    tools = data.get("tools", [])
    if not isinstance(tools, list):
        why = "tools must be a list of function tools"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="tools")
    choosing = ("tool_choice", "parallel_tool_calls")
    fields: dict[str, Any] = {k: data[k] for k in choosing if k in data}
    if tools:
        fields["tools"] = [_function(i, tool) for i, tool in enumerate(tools)]
    choice = fields.get("tool_choice")
    if isinstance(choice, dict):
        named = choice.get("type") == "function" and set(choice) == {"type", "name"}
        if not named or not isinstance(choice["name"], str):
            why = f"tool_choice names a function as {NAMED_CHOICE}"
            raise LlmqError(ErrorCode.UNSUPPORTED, why, param="tool_choice")
        fields["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    return fields


def echoed_tools(data: dict[str, Any]) -> dict[str, Any]:
    """The tools, tool_choice and parallel_tool_calls a `response` echoes: as the body gave
    them (each tool with every field of a function tool), else none, "auto" and true."""
    tools = [
        {"type": "function", **{k: tool.get(k) for k in FUNCTION_FIELDS}}
        for tool in data.get("tools", [])
    ]
    return {
        "tools": tools,
        "tool_choice": data.get("tool_choice", "auto"),
        "parallel_tool_calls": data.get("parallel_tool_calls", True),
    }


def tool_message(
    index: int, item: dict[str, Any], messages: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """A `function_call` or `function_call_output` input item (the input's `index`th) as
    chat: a call joins the assistant message just before it (calls made together are one
    message, as chat has them) or makes one (None is returned then: nothing new); an output
    is a tool message, its content as given (a string, or parts of text), answering a call
    made before it."""
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not 0 < len(call_id) <= MAX_CALL_ID_CHARS:
        why = (
            f"input.{index}: a {item['type']} names its call: call_id, "
            f"1 to {MAX_CALL_ID_CHARS} characters"
        )
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"input[{index}].call_id")
    made = {c["id"] for m in messages for c in m.get("tool_calls") or []}
    if item["type"] == "function_call_output":
        output = item.get("output")
        if not isinstance(output, str | list):
            why = f"input.{index}.output must be a string or a list of text parts"
            raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"input[{index}].output")
        if call_id not in made:
            why = (
                f"input.{index}: no function_call before it has call_id {call_id!r} (an "
                "output answers a call of the response continued, or of an item before it)"
            )
            raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"input[{index}].call_id")
        return {"role": "tool", "tool_call_id": call_id, "content": output}
    call = _chat_call(call_id, *_called(index, item))
    if call_id in made:
        why = (
            f"input.{index}: the call {call_id} is in the conversation already (the response "
            "continued made it, or an item before): send only its output"
        )
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"input[{index}].call_id")
    if messages and messages[-1]["role"] == "assistant":
        last = messages[-1]
        last["tool_calls"] = [*(last.get("tool_calls") or []), call]
        return None
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def _called(index: int, item: dict[str, Any]) -> tuple[str, str]:
    """A `function_call` item's name and arguments, checked here so that an error names
    the item (joined to a message before it, the chat reader's would name that one)."""
    name, arguments = item.get("name"), item.get("arguments")
    if not isinstance(name, str) or not re.fullmatch(FUNCTION_NAME, name):
        why = f"input.{index}.name must be a function's name (letters, digits, _ and -, at most 64)"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"input[{index}].name")
    if not isinstance(arguments, str) or len(arguments) > MAX_ARGUMENTS_CHARS:
        why = (
            f"input.{index}.arguments must be a string, the call's arguments as JSON, "
            f"at most {MAX_ARGUMENTS_CHARS} characters"
        )
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"input[{index}].arguments")
    return name, arguments


def call_item_id(correlation_id: str, number: int) -> str:
    """The id of the `function_call` item of the `number`th call (from 0) of the response to
    the request of that correlation id, resp_<cid>: it names that response, where an
    item_reference to it alone finds it (the call's own id, a digest of the conversation,
    names none)."""
    return f"{CALL_ITEM_ID}{correlation_id}_{number}"


def call_items(
    calls: list[dict[str, Any]], status: str, correlation_id: str
) -> list[dict[str, Any]]:
    """An answer's tool calls (chat's, as dicts) as the `function_call` output items of the
    response to the request of that correlation id."""
    return [
        call_item(ToolCall.model_validate(call), call_item_id(correlation_id, number), status)
        for number, call in enumerate(calls)
    ]


def call_item(
    call: ToolCall, item_id: str, status: str, arguments: str | None = None
) -> dict[str, Any]:
    """A call as a `function_call` item of that id (its `arguments` so far, when not all of
    them)."""
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.function.name,
        "arguments": call.function.arguments if arguments is None else arguments,
        "status": status,
    }


def assistant_of(output: list[dict[str, Any]]) -> dict[str, Any]:
    """A response's output as the assistant message a continuation follows: its text (None
    where it makes calls and wrote none before them) and its calls."""
    texts = [item["content"][0]["text"] for item in output if item["type"] == "message"]
    calls = [item for item in output if item["type"] == "function_call"]
    if not calls:
        return {"role": "assistant", "content": texts[0]}
    called = [_chat_call(c["call_id"], c["name"], c["arguments"]) for c in calls]
    return {"role": "assistant", "content": texts[0] if texts else None, "tool_calls": called}


def _function(index: int, tool: object) -> dict[str, Any]:
    """A function tool (the body's `index`th) as chat's."""
    if not isinstance(tool, dict):
        why = "each tool must be an object"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"tools[{index}]")
    if tool.get("type") != "function":
        why = f"tools of type {tool.get('type')!r} are not served: llmq serves function tools"
        raise LlmqError(ErrorCode.UNSUPPORTED, why, param=f"tools[{index}].type")
    if "function" in tool:
        why = (
            f"tools.{index}: a function tool of this API is flat, "
            '{"type": "function", "name": ..., "parameters": ...}, not under "function" as '
            "in chat completions"
        )
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"tools[{index}].function")
    return {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}


def _chat_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A call as chat's messages carry it."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
