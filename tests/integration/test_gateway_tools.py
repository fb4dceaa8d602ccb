"""Tool calls through the real `openai` SDK (and a Kafka app's client) on the session's stack:
a named function's call, "required" calls and "auto" (text or calls, as the model chooses),
held to the functions' schemas by the real
engine (ours, and vLLM's server behind the HTTP engine), cached with their ids, streamed
whole, a tool's result answered, the same through the Responses API (function_call items,
continued from a stored response or sent whole), and what is not served refused by name.
Each schema leaves
the model no choice of length (enums, no other properties, one call), so no assertion waits
on what it would say."""

from __future__ import annotations

import json
from typing import Any, Literal

import openai
import pytest
from openai import OpenAI
from openai.types.responses import ResponseFunctionToolCall, ToolChoiceFunction
from pydantic import BaseModel

from llmq import Client
from schemas.errors import ErrorCode
from tests.integration.helpers import unique_prompt

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "smollm2-135m"
REMOTE = "smollm2-remote"
ZONES = ["UTC", "CET"]
ZONE = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ZONES}},
    "required": ["zone"],
    "additionalProperties": False,
}
UP = {
    "type": "object",
    "properties": {"up": {"type": "boolean"}},
    "required": ["up"],
    "additionalProperties": False,
}
TOOLS: Any = [
    {"type": "function", "function": {"name": "get_time", "parameters": ZONE}},
    {"type": "function", "function": {"name": "is_up", "parameters": UP}},
]
NAMED: Any = {"type": "function", "function": {"name": "get_time"}}
FLAT: Any = [{"type": "function", **tool["function"]} for tool in TOOLS]
"""The same tools as the Responses API takes them."""


def _ask(what: str = "What time is it in Paris?") -> Any:
    return [{"role": "user", "content": unique_prompt(what)}]


@pytest.mark.parametrize("model", [MODEL, REMOTE])
def test_a_named_functions_call_follows_its_schema(sdk: OpenAI, model: str) -> None:
    answer = sdk.chat.completions.create(
        model=model, messages=_ask(), tools=TOOLS, tool_choice=NAMED, max_tokens=32, temperature=0
    )
    [choice] = answer.choices
    assert choice.finish_reason == "stop" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments)["zone"] in ZONES
    assert (answer.model_extra or {})["llmq"]["model_used"] == model


def test_required_calls_are_cached_with_their_ids_and_streamed_whole(sdk: OpenAI) -> None:
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": _ask("Is the server up, and what time is it?"),
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 48,
        "temperature": 0,
    }
    first = sdk.chat.completions.create(**ask)
    [choice] = first.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    arguments = json.loads(call.function.arguments)
    assert (call.function.name, set(arguments)) in (("get_time", {"zone"}), ("is_up", {"up"}))
    again = sdk.chat.completions.create(**ask)
    assert (again.model_extra or {})["llmq"]["cache"] == "exact"
    assert again.choices[0].message.tool_calls == choice.message.tool_calls  # ids too
    chunks = list(sdk.chat.completions.create(**ask, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert not any(c.choices[0].delta.content for c in chunks)  # the JSON is not sent as text
    [streamed] = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert streamed.function is not None
    assert (streamed.index, streamed.id, streamed.function.name) == (0, call.id, call.function.name)
    assert streamed.function.arguments == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # n answers streamed at once: each choice's call comes whole, by its index.
    fresh = {**ask, "messages": _ask("What time is it?")}
    chunks = list(sdk.chat.completions.create(**fresh, n=2, stream=True))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        [made] = [d for c in mine for d in c.delta.tool_calls or []]
        assert made.function is not None and made.function.arguments is not None
        arguments = json.loads(made.function.arguments)
        assert (made.function.name, set(arguments)) in (("get_time", {"zone"}), ("is_up", {"up"}))
        assert mine[-1].finish_reason == "tool_calls"


def test_a_tools_result_is_part_of_the_conversation(sdk: OpenAI, client: Client) -> None:
    ask = _ask()
    first = sdk.chat.completions.create(
        model=MODEL, messages=ask, tools=TOOLS, tool_choice=NAMED, max_tokens=32, temperature=0
    )
    [call] = first.choices[0].message.tool_calls or []
    asked: Any = [*ask, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}]

    def answer(result: str) -> Any:
        messages = [*asked, {"role": "tool", "tool_call_id": call.id, "content": result}]
        return sdk.chat.completions.create(
            model=MODEL,
            messages=messages,
            tools=TOOLS,
            tool_choice="none",
            max_tokens=8,
            temperature=0,
        )

    noon, midnight = answer('{"time": "12:00"}'), answer('{"time": "00:00"}')
    for reply in (noon, midnight):  # each generated: neither took the other's answer
        assert (reply.model_extra or {})["llmq"]["cache"] == "none"
        assert reply.choices[0].message.tool_calls is None
        assert reply.choices[0].finish_reason in ("stop", "length")
    assert noon.usage is not None and first.usage is not None
    assert noon.usage.prompt_tokens > first.usage.prompt_tokens
    # A Kafka app asks the same: the answer's message carries the calls.
    result = client.ask(ask, tools=TOOLS, tool_choice=NAMED, max_tokens=32, temperature=0)
    assert result.response is not None
    message = result.response.choices[0].message
    assert message.tool_calls is not None
    assert [c.model_dump() for c in message.tool_calls] == [call.model_dump()]  # cached


class Zone(BaseModel):
    zone: Literal["UTC", "CET"]


def test_the_message_the_sdks_parse_hands_back_continues_the_conversation(sdk: OpenAI) -> None:
    """The usual tool loop: the answer's message, as `parse` returns it (its calls carry
    `parsed_arguments`), is sent back with the tool's result."""
    ask, tools = _ask(), [openai.pydantic_function_tool(Zone, name="get_time")]
    first = sdk.chat.completions.parse(
        model=MODEL,
        messages=ask,
        tools=tools,
        tool_choice=NAMED,
        max_tokens=32,
        temperature=0,
    )
    message = first.choices[0].message
    [call] = message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, Zone)
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"time": "12:00"}'}
    messages: Any = [*ask, message, result]
    reply = sdk.chat.completions.create(
        model=MODEL, messages=messages, tools=tools, tool_choice="none", max_tokens=8
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and first.usage is not None
    assert reply.usage.prompt_tokens > first.usage.prompt_tokens


def test_responses_call_functions_and_follow_their_outputs(sdk: OpenAI) -> None:
    question = unique_prompt("What time is it in Paris?")
    ask: dict[str, Any] = {"model": MODEL, "tools": FLAT, "temperature": 0}
    named: Any = {"type": "function", "name": "get_time"}
    first = sdk.responses.create(**ask, input=question, tool_choice=named, max_output_tokens=32)
    [call] = first.output
    assert isinstance(call, ResponseFunctionToolCall) and call.status == "completed"
    assert call.name == "get_time" and json.loads(call.arguments)["zone"] in ZONES
    assert first.output_text == "" and first.tool_choice == ToolChoiceFunction(**named)
    # The chat request of the same conversation: the same answer, from the cache, same id.
    chat = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        tools=TOOLS,
        tool_choice=NAMED,
        max_tokens=32,
        temperature=0,
    )
    assert (chat.model_extra or {})["llmq"]["cache"] == "exact"
    assert [c.id for c in chat.choices[0].message.tool_calls or []] == [call.call_id]
    output: Any = {"type": "function_call_output", "call_id": call.call_id, "output": "12:00"}
    follow = sdk.responses.create(
        **ask,
        previous_response_id=first.id,
        input=[output],
        tool_choice="none",
        max_output_tokens=8,
    )
    assert [item.type for item in follow.output] == ["message"]
    assert follow.usage is not None and first.usage is not None
    assert follow.usage.input_tokens > first.usage.input_tokens
    listed = sdk.responses.input_items.list(follow.id, order="asc")
    assert [i.type for i in listed] == ["message", "function_call", "function_call_output"]
    # Sent whole, the first answer's items fed back as input: the same request, cached.
    items: Any = [
        {"role": "user", "content": question},
        *[item.model_dump(exclude_none=True) for item in first.output],
        output,
    ]
    whole = sdk.responses.create(**ask, input=items, tool_choice="none", max_output_tokens=8)
    assert (whole.model_extra or {})["llmq"]["cache"] == "exact"
    assert whole.output_text == follow.output_text


def test_streamed_response_calls_come_whole_and_are_stored(sdk: OpenAI) -> None:
    events = list(
        sdk.responses.create(
            model=MODEL,
            input=unique_prompt("Is the server up, and what time is it?"),
            tools=FLAT,
            tool_choice="required",
            parallel_tool_calls=False,
            max_output_tokens=48,
            temperature=0,
            stream=True,
        )
    )
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    last = events[-1].response  # type: ignore[union-attr]
    [call] = last.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert (call.name, set(json.loads(call.arguments))) in (
        ("get_time", {"zone"}),
        ("is_up", {"up"}),
    )
    assert events[3].delta == call.arguments  # type: ignore[union-attr]
    assert sdk.responses.retrieve(last.id).output == last.output
    with pytest.raises(openai.BadRequestError, match="not served by 'smollm2-remote'"):
        sdk.responses.create(model=REMOTE, input="Hi", tools=FLAT, max_output_tokens=4)


def _chosen(choice: Any) -> tuple[str, Any]:
    """An answer under "auto", text or calls as the model chose, checked against what llmq
    holds either to, whichever it is: ("calls", the calls) or ("text", the text)."""
    calls = choice.message.tool_calls
    if calls:  # with the text the model wrote before them, if any
        assert choice.finish_reason == "tool_calls"
        assert "<tool_call" not in (choice.message.content or "")
        for call in calls:
            arguments = json.loads(call.function.arguments)
            assert (call.function.name, set(arguments)) in (
                ("get_time", {"zone"}),
                ("is_up", {"up"}),
            )
        return "calls", [c.model_dump() for c in calls]
    assert choice.finish_reason in ("stop", "length")
    if choice.finish_reason == "stop":  # a call, once begun, cannot stop before its end
        assert "<tool_call>" not in choice.message.content
    return "text", choice.message.content


def _streamed(chunks: list[Any]) -> tuple[str | None, list[tuple[str, str, str]], str | None]:
    """A streamed answer's text, calls (id, name, arguments) and finish reason."""
    said = "".join(c.choices[0].delta.content or "" for c in chunks) or None
    calls = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    made = [
        (d.id or "", d.function.name or "", d.function.arguments or "") for d in calls if d.function
    ]
    return said, made, chunks[-1].choices[0].finish_reason


def _whole(choice: Any) -> tuple[str | None, list[tuple[str, str, str]], str | None]:
    """The same of a whole answer."""
    calls = choice.message.tool_calls or []
    made = [(c.id, c.function.name, c.function.arguments) for c in calls]
    return choice.message.content, made, choice.finish_reason


def test_auto_answers_text_or_calls_held_to_the_schemas_cached_and_streamed(sdk: OpenAI) -> None:
    """OpenAI's default with tools: the engine is held by the grammar (a call, once begun,
    to a function's schema); whatever the model chose comes back, cached, and streamed."""
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": _ask("Is the server up, and what time is it?"),
        "tools": TOOLS,
        "max_tokens": 48,
        "temperature": 0,
    }
    first = sdk.chat.completions.create(**ask)
    [choice] = first.choices
    kind, answer = _chosen(choice)
    again = sdk.chat.completions.create(**ask, tool_choice="auto")  # the same request
    assert (again.model_extra or {})["llmq"]["cache"] == "exact"
    assert _chosen(again.choices[0]) == (kind, answer)
    assert _streamed(list(sdk.chat.completions.create(**ask, stream=True))) == _whole(choice)
    # Generated as it streams (its text as it comes): the answer kept is the one streamed.
    fresh = {**ask, "messages": _ask("Is the server up?")}
    chunks = list(sdk.chat.completions.create(**fresh, stream=True))
    [kept] = sdk.chat.completions.create(**fresh).choices
    _chosen(kept)
    assert _streamed(chunks) == _whole(kept)
    # The Responses API asks the same of the engine: the message of the text (before the
    # calls, if any), then a function_call item each; streamed, the same output.
    asked: dict[str, Any] = {
        "model": MODEL,
        "input": ask["messages"][0]["content"],
        "tools": FLAT,
        "max_output_tokens": 48,
        "temperature": 0,
    }
    response = sdk.responses.create(**asked)
    assert response.tool_choice == "auto"
    text = choice.message.content
    said = [] if kind == "calls" and not text else [("message", text or "")]
    made = [("function_call", c.function.name) for c in choice.message.tool_calls or []]
    assert _items(response.output) == said + made
    assert (response.model_extra or {})["llmq"]["cache"] == "exact"
    events = list(sdk.responses.create(**asked, stream=True))
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert _items(events[-1].response.output) == said + made


def _items(output: list[Any]) -> list[tuple[str, str]]:
    """A response's output items: each message's text, each call's function."""
    return [
        ("message", item.content[0].text) if item.type == "message" else (item.type, item.name)
        for item in output
    ]


def test_auto_for_a_model_whose_calls_llmq_does_not_read_is_refused(client: Client) -> None:
    """A Kafka app's request skips the front door's check: the worker refuses it unstarted
    (tools without a choice are "auto" there too)."""
    for choice in ("auto", None):
        result = client.ask(_ask(), model=REMOTE, tools=TOOLS, tool_choice=choice, max_tokens=8)
        assert result.error is not None and result.error.code is ErrorCode.UNSUPPORTED
        message = result.error.message
        assert "'smollm2-remote'" in message and "tool_call_parser" in message


def test_what_is_not_served_is_refused_by_name(sdk: OpenAI) -> None:
    ask: dict[str, Any] = {"model": MODEL, "messages": _ask(), "tools": TOOLS, "max_tokens": 8}
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"model": REMOTE}, """tool_choice "auto" (the default with tools) is not served by"""),
        ({"model": REMOTE, "tool_choice": "auto"}, "names no tool_call_parser"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "'nope'"),
        (
            {"tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ({"messages": [{"role": "tool", "content": "x"}], "tool_choice": "none"}, "tool_call_id"),
        (
            {
                "messages": [*_ask(), {"role": "tool", "tool_call_id": "c9", "content": "x"}],
                "tool_choice": "none",
            },
            "tool_call_id 'c9' names no call",
        ),
    ]
    for fields, why in refusals:
        with pytest.raises(openai.BadRequestError) as bad:
            sdk.chat.completions.create(**{**ask, **fields})
        assert why in bad.value.message, (fields, bad.value.message)
    orphan: Any = [*_ask(), {"type": "function_call_output", "call_id": "c9", "output": "x"}]
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.responses.create(model=MODEL, input=orphan, tools=FLAT, tool_choice="none")
    assert "input.1: no function_call before it has call_id 'c9'" in bad.value.message
