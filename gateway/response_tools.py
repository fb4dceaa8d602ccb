"""Function tools of the Responses API on chat's: a body's `tools` and `tool_choice` as chat
fields, `function_call` and `function_call_output` input items as an assistant's calls and
tool messages, and an answer's calls as `function_call` output items (and back, to store)."""

from __future__ import annotations

from typing import Any

from schemas.errors import ErrorCode, LlmqError
from schemas.tools import ToolCall

FUNCTION_FIELDS = ("name", "description", "parameters", "strict")
"""A function tool's fields, flat in this API, under `function` in chat's."""
AUTO_TOOLS = (
    'tool_choice "auto" (the default with tools) is not served: llmq holds a call to its '
    'function\'s schema, which needs the call decided before the answer; send "required" '
    '(calls of any of the tools), {"type": "function", "name": ...} (a call of that one) '
    'or "none"'
)


def chat_tools(data: dict[str, Any]) -> dict[str, Any]:
    """The body's tools, tool_choice and parallel_tool_calls as chat's fields; with tools,
    "auto" (OpenAI's default) is refused, naming what is served."""
    tools = data.get("tools", [])
    if not isinstance(tools, list):
        raise LlmqError(ErrorCode.INVALID_REQUEST, "tools must be a list of function tools")
    fields: dict[str, Any] = {
        k: data[k] for k in ("tool_choice", "parallel_tool_calls") if k in data
    }
    if tools:
        fields["tools"] = [_function(i, tool) for i, tool in enumerate(tools)]
        if fields.setdefault("tool_choice", "auto") == "auto":
            raise LlmqError(ErrorCode.UNSUPPORTED, AUTO_TOOLS)
    choice = fields.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") != "function" or set(choice) != {"type", "name"}:
            why = 'tool_choice names a function as {"type": "function", "name": ...}'
            raise LlmqError(ErrorCode.UNSUPPORTED, why)
        fields["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    return fields


def echoed_tools(data: dict[str, Any]) -> dict[str, Any]:
    """The tools, tool_choice and parallel_tool_calls a `response` echoes: as the body gave
    them (each tool with every field of a function tool), else none, "none" and true."""
    tools = [
        {"type": "function", **{k: tool.get(k) for k in FUNCTION_FIELDS}}
        for tool in data.get("tools", [])
    ]
    return {
        "tools": tools,
        "tool_choice": data.get("tool_choice", "none"),
        "parallel_tool_calls": data.get("parallel_tool_calls", True),
    }


CALLED = ("name", "arguments")
"""A call's fields, flat in a `function_call` item, under `function` in chat's."""


def tool_message(item: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A `function_call` or `function_call_output` input item as chat: a call joins the
    assistant message just before it (calls made together are one message, as chat has
    them) or makes one (None is returned then: nothing new); an output is a tool message."""
    if not isinstance(item.get("call_id"), str):
        raise LlmqError(ErrorCode.INVALID_REQUEST, f"a {item['type']} names its call: call_id")
    if item["type"] == "function_call_output":
        return {"role": "tool", "tool_call_id": item["call_id"], "content": item.get("output")}
    function = {k: item.get(k) for k in CALLED}
    call = {"id": item["call_id"], "type": "function", "function": function}
    if messages and messages[-1]["role"] == "assistant":
        last = messages[-1]
        last["tool_calls"] = [*(last.get("tool_calls") or []), call]
        return None
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def call_items(calls: list[dict[str, Any]], status: str) -> list[dict[str, Any]]:
    """An answer's tool calls (chat's, as dicts) as `function_call` output items."""
    return [call_item(ToolCall.model_validate(call), status) for call in calls]


def call_item(call: ToolCall, status: str, arguments: str | None = None) -> dict[str, Any]:
    """A call as a `function_call` item (its `arguments` so far, when not all of them)."""
    return {
        "type": "function_call",
        "id": f"fc_{call.id.removeprefix('call_')}",
        "call_id": call.id,
        "name": call.function.name,
        "arguments": call.function.arguments if arguments is None else arguments,
        "status": status,
    }


def assistant_of(output: list[dict[str, Any]]) -> dict[str, Any]:
    """A response's output as the assistant message a continuation follows: its calls, or
    its text."""
    calls = [item for item in output if item["type"] == "function_call"]
    if calls:
        called = [
            {
                "id": c["call_id"],
                "type": "function",
                "function": {k: c[k] for k in CALLED},
            }
            for c in calls
        ]
        return {"role": "assistant", "content": None, "tool_calls": called}
    [message] = output
    return {"role": "assistant", "content": message["content"][0]["text"]}


def _function(index: int, tool: object) -> dict[str, Any]:
    """A function tool (the body's `index`th) as chat's."""
    if not isinstance(tool, dict):
        raise LlmqError(ErrorCode.INVALID_REQUEST, "each tool must be an object")
    if tool.get("type") != "function":
        why = f"tools of type {tool.get('type')!r} are not served: llmq serves function tools"
        raise LlmqError(ErrorCode.UNSUPPORTED, why)
    if "function" in tool:
        why = (
            f"tools.{index}: a function tool of this API is flat, "
            '{"type": "function", "name": ..., "parameters": ...}, not under "function" as '
            "in chat completions"
        )
        raise LlmqError(ErrorCode.INVALID_REQUEST, why)
    return {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}
