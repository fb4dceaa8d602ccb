"""Function tools on the Responses API (gateway.response_tools): a body's tools and choice and
its function-call items read as chat's, an answer's calls as `function_call` items (whole
and streamed, read with the SDK's own types), and what is stored to continue from."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.responses import (
    Response,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseStreamEvent,
)
from pydantic import TypeAdapter

from gateway import sse
from gateway.openai import read_call
from gateway.response_events import ResponseEvents
from gateway.responses import ResponseCall, read_response_call, response_of
from llmq.streaming import Delta
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.fingerprint import fingerprint
from schemas.request import ChatBody, ChatMessage
from schemas.result import (
    ChatCompletion,
    Choice,
    ChoiceLogprobs,
    InferenceResult,
    TokenLogprob,
    Usage,
)
from schemas.tools import NamedToolChoice, finish_reason

ZONE = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "get_time", "parameters": ZONE, "strict": True},
    {"type": "function", "name": "ping", "description": "Is it up?"},
]
CALLS = '[{"name":"get_time","parameters":{"zone":"UTC"}},{"name":"ping","parameters":{}}]'
WHERE: dict[str, Any] = {
    "tenant": "t",
    "lane": None,
    "catalog": Catalog.builtin(),
    "timeout_s": 60,
}
USAGE = Usage(prompt_tokens=9, completion_tokens=6, total_tokens=15)


def _read(history: list[dict[str, Any]] | None = None, **body: Any) -> ResponseCall:
    data = {"input": "What time is it in Paris?", "tools": TOOLS, **body}
    return read_response_call(data, **WHERE, history=history or [])


def _result(
    body: ChatBody, text: str, reason: str = "stop", tokens: list[str] | None = None
) -> InferenceResult:
    """The answer `text` (its `tokens`' log-probabilities, where given)."""
    calls = body.calls_in(text)
    message = ChatMessage(role="assistant", content=text, tool_calls=calls)
    logprobs = None
    if tokens is not None:
        logprobs = ChoiceLogprobs(content=[TokenLogprob(token=t, logprob=-1.0) for t in tokens])
    reason = finish_reason(body.tool_choice, calls, reason)
    choice = Choice(message=message, finish_reason=reason, logprobs=logprobs)
    response = ChatCompletion(id="x", created=1, model="m", choices=[choice], usage=USAGE)
    return InferenceResult(correlation_id="c", tenant="t", status="ok", response=response)


def test_function_tools_and_a_named_choice_read_as_chats() -> None:
    call = _read(tool_choice={"type": "function", "name": "get_time"}, parallel_tool_calls=False)
    body = call.request.body
    assert [t.function.name for t in body.tools or []] == ["get_time", "ping"]
    assert body.tools is not None and body.tools[0].function.schema_ == ZONE
    assert isinstance(body.tool_choice, NamedToolChoice)
    assert body.tool_choice.function.name == "get_time" and body.calls_tools
    assert body.parallel_tool_calls is False
    assert _read(tool_choice="none").request.body.calls_tools is False
    assert _read(tool_choice="required").request.body.tool_choice == "required"
    auto = _read()  # OpenAI's default with tools, echoed as it was read
    assert auto.request.body.tool_choice == auto.echo.asked["tool_choice"] == "auto"


def test_what_is_not_served_is_refused_naming_what_is() -> None:
    refusals: list[tuple[dict[str, Any], ErrorCode, str]] = [
        ({"tools": [{"type": "web_search"}]}, ErrorCode.UNSUPPORTED, "type 'web_search'"),
        ({"tools": {"type": "function"}}, ErrorCode.INVALID_REQUEST, "tools must be a list"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"},
            ErrorCode.INVALID_REQUEST,
            "tools.0: a function tool of this API is flat",
        ),
        (
            {"tools": [{"type": "function", "name": "a b"}], "tool_choice": "required"},
            ErrorCode.INVALID_REQUEST,
            "tools.0.name",
        ),
        (
            {"tool_choice": {"type": "allowed_tools", "tools": []}},
            ErrorCode.UNSUPPORTED,
            "tool_choice names a function",
        ),
        (
            {"tool_choice": {"type": "function", "name": 5}},
            ErrorCode.UNSUPPORTED,
            'tool_choice names a function as {"type": "function", "name": ...}',
        ),
        (
            {"tool_choice": {"type": "function", "name": "nope"}},
            ErrorCode.INVALID_REQUEST,
            "'nope', which is not one of the tools",
        ),
        (
            {
                "input": [{"type": "function_call", "name": "ping", "arguments": "{}"}],
                "tool_choice": "none",
            },
            ErrorCode.INVALID_REQUEST,
            "a function_call names its call: call_id",
        ),
    ]
    for body, code, why in refusals:
        with pytest.raises(LlmqError) as refused:
            _read(**body)
        assert refused.value.code is code, body
        assert why in refused.value.message, (body, refused.value.message)


def test_function_call_items_and_their_outputs_are_the_chat_conversation() -> None:
    """Calls made together are one assistant message, as in chat: the same request, and so
    the same fingerprint (cache entry), as the chat body of that conversation."""
    items: list[dict[str, Any]] = [
        {"role": "user", "content": "What time is it in Paris?"},
        {"type": "function_call", "call_id": "call_a", "name": "get_time", "arguments": "{}"},
        {"type": "function_call", "call_id": "call_b", "name": "ping", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "12:00"},
        {
            "type": "function_call_output",
            "call_id": "call_b",
            "output": [{"type": "input_text", "text": "up"}],
        },
    ]
    call = _read(input=items, tool_choice="none", max_output_tokens=8)
    chat = read_call(
        {
            "messages": _chats(items),
            "tools": [{"type": "function", "function": _flat(t)} for t in TOOLS],
            "tool_choice": "none",
            "max_tokens": 8,
        },
        **WHERE,
    )
    assert call.request.body.messages == chat.request.body.messages
    assert [m.role for m in call.request.body.messages] == ["user", "assistant", "tool", "tool"]
    assert fingerprint(call.request, "m") == fingerprint(chat.request, "m")
    with pytest.raises(LlmqError, match=r"input\.3: no function_call before it has call_id 'c'"):
        _read(input=[*items[:3], {**items[3], "call_id": "c"}], tool_choice="none")
    with pytest.raises(LlmqError, match=r"input\.1: no function_call before it has call_id"):
        _read(input=[items[0], items[3]], tool_choice="none")
    with pytest.raises(LlmqError, match=r"input\.3\.output must be a string or a list"):
        _read(input=[*items[:3], {**items[3], "output": 5}], tool_choice="none")
    with pytest.raises(LlmqError, match=r"input\.2\.arguments must be a string"):
        _read(input=[*items[:2], {**items[2], "arguments": {}}], tool_choice="none")
    with pytest.raises(LlmqError, match=r"input\.1\.name must be a function's name"):
        _read(input=[items[0], {**items[1], "name": "a b"}], tool_choice="none")


def _flat(tool: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tool.items() if k != "type"}


def _chat(item: dict[str, Any]) -> dict[str, Any]:
    """A function_call item as chat's call."""
    function = {"name": item["name"], "arguments": item["arguments"]}
    return {"id": item["call_id"], "type": "function", "function": function}


def _chats(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        items[0],
        {"role": "assistant", "content": None, "tool_calls": [_chat(items[1]), _chat(items[2])]},
        {"role": "tool", "tool_call_id": "call_a", "content": "12:00"},
        {"role": "tool", "tool_call_id": "call_b", "content": "up"},
    ]


def test_an_answers_calls_are_function_call_items_and_a_continuation_follows_them() -> None:
    call = _read(tool_choice="required")
    body = response_of(call.echo, [_result(call.request.body, CALLS)])
    read = Response.model_validate(body)
    assert read.status == "completed" and read.output_text == ""
    made = [item for item in read.output if isinstance(item, ResponseFunctionToolCall)]
    assert len(made) == len(read.output) == 2
    assert [(c.name, json.loads(c.arguments)) for c in made] == [
        ("get_time", {"zone": "UTC"}),
        ("ping", {}),
    ]
    assert all(c.call_id.startswith("call_") for c in made)
    cid = call.request.correlation_id
    assert [c.id for c in made] == [f"fc_{cid}_0", f"fc_{cid}_1"]  # each names its response
    assert read.tool_choice == "required" and read.parallel_tool_calls
    assert [t.name for t in read.tools] == ["get_time", "ping"]  # type: ignore[union-attr]
    kept = call.kept(body)
    after = [{"type": "function_call_output", "call_id": c.call_id, "output": "ok"} for c in made]
    follow = _read(kept.messages, input=after, tool_choice="none")
    messages = follow.request.body.messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "tool"]
    assert [c.id for c in messages[1].tool_calls or []] == [c.call_id for c in made]
    assert [m.tool_call_id for m in messages[2:]] == [c.call_id for c in made]
    # The same conversation sent whole, the answer's items fed back: the same messages.
    asked = {"role": "user", "content": "What time is it in Paris?"}
    whole = _read(input=[asked, *body["output"], *after], tool_choice="none")
    assert whole.request.body.messages == messages


def test_calls_join_the_assistant_message_before_them_the_history_s_last_too() -> None:
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Let me see."}]
    call = {"type": "function_call", "call_id": "call_a", "name": "ping", "arguments": "{}"}
    follow = _read(history, input=[call], tool_choice="none")
    whole = _read(input=[*history, call], tool_choice="none")
    assert follow.request.body.messages == whole.request.body.messages
    assert [m.role for m in whole.request.body.messages] == ["user", "assistant"]
    assert history[1] == {"role": "assistant", "content": "Let me see."}  # not changed
    # A call the conversation holds already (an answer's output fed back while continuing
    # it) is refused, not made twice.
    answered: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [_chat(call)]}
    called = [history[0], answered]
    output = {"type": "function_call_output", "call_id": "call_a", "output": "up"}
    with pytest.raises(
        LlmqError, match=r"input\.0: the call call_a is in the conversation already"
    ):
        _read(called, input=[call, output], tool_choice="none")
    assert (
        _read(called, input=[output], tool_choice="none").request.body.messages[-1].role == "tool"
    )
    with pytest.raises(LlmqError, match=r"input\.2\.name must be a function's name"):
        _read(input=[*history, {**call, "name": "ping\n"}], tool_choice="none")


def test_text_that_makes_no_calls_is_the_answers_message() -> None:
    call = _read(tool_choice={"type": "function", "name": "get_time"}, max_output_tokens=3)
    body = response_of(call.echo, [_result(call.request.body, '{"zo', "length")])
    read = Response.model_validate(body)
    assert (read.status, read.output_text) == ("incomplete", '{"zo')
    assert call.kept(body).messages[-1] == {"role": "assistant", "content": '{"zo'}


async def _pieces(*pieces: Delta) -> AsyncIterator[Delta]:
    for piece in pieces:
        yield piece


def _streamed(call: ResponseCall, reason: str, *pieces: str) -> tuple[list[Any], list[Any]]:
    """The events of an answer streamed in `pieces` (a token each), read with the SDK's
    types, and the responses kept."""
    shape = ResponseEvents(call.echo, 7, "m", call.request.body)
    kept: list[dict[str, Any]] = []

    async def keep(response: dict[str, Any]) -> None:
        kept.append(response)

    async def main() -> list[str]:
        tokens = [[TokenLogprob(token=t, logprob=-1.0, top_logprobs=[])] for t in pieces]
        offsets = [sum(map(len, pieces[:i])) for i in range(len(pieces))]
        at = zip(pieces, offsets, tokens, strict=True)
        deltas = [Delta(text, offset, logprobs=lp) for text, offset, lp in at]
        deltas[-1] = Delta(pieces[-1], offsets[-1], reason, USAGE, logprobs=tokens[-1])
        stream = sse.response_events(shape, deltas[0], _pieces(*deltas[1:]), None, keep=keep)
        return [e async for e in stream]

    reader = TypeAdapter(ResponseStreamEvent)
    events = []
    for line in asyncio.run(main()):
        name, body = line.split("\n", 1)
        event = reader.validate_python(json.loads(body.removeprefix("data: ")))
        assert name == f"event: {event.type}"
        events.append(event)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events, kept


def test_streamed_calls_come_whole_once_read_as_openais_events() -> None:
    call = _read(tool_choice="required")
    events, kept = _streamed(call, "stop", CALLS[:4], CALLS[4:])
    per_call = [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        *per_call,
        *per_call,
        "response.completed",
    ]
    whole = response_of(call.echo, [_result(call.request.body, CALLS)])
    last = events[-1].response
    assert [i.model_dump() for i in last.output] == [
        ResponseFunctionToolCall.model_validate(i).model_dump() for i in whole["output"]
    ]
    assert events[3].delta == events[4].arguments == whole["output"][0]["arguments"]
    assert events[2].item.status == "in_progress" and events[2].item.arguments == ""
    assert [r["output"] for r in kept] == [whole["output"]]


def test_a_streamed_answer_that_makes_no_calls_is_its_text() -> None:
    call = _read(
        tool_choice={"type": "function", "name": "get_time"},
        max_output_tokens=3,
        include=["message.output_text.logprobs"],
    )
    events, kept = _streamed(call, "length", '{"zo', 'ne": "U')
    assert [t.token for t in events[4].logprobs] == ['{"zo', 'ne": "U']
    assert [e.type for e in events][2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert (
        events[-1].response.output_text
        == '{"zone": "U'
        == kept[0]["output"][0]["content"][0]["text"]
    )


HERMES = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'
"""A call as a model writes it under "auto"."""


def test_under_auto_the_text_before_the_calls_is_a_message_before_them() -> None:
    call = _read(include=["message.output_text.logprobs"])  # "auto"
    tokens = ["Let", " me", " look", ".\n", HERMES]  # the message's: those of its text
    answer = _result(call.request.body, "".join(tokens), tokens=tokens)
    body = response_of(call.echo, [answer])
    read = Response.model_validate(body)
    assert [item.type for item in read.output] == ["message", "function_call"]
    assert (read.status, read.output_text) == ("completed", "Let me look.")
    message = read.output[0]
    assert isinstance(message, ResponseOutputMessage)
    assert [t.token for t in message.content[0].logprobs or []] == tokens[:4]  # type: ignore[union-attr]
    made = read.output[1]
    assert isinstance(made, ResponseFunctionToolCall)
    assert (made.name, json.loads(made.arguments)) == ("get_time", {"zone": "UTC"})
    # Stored, the answer is chat's assistant message: its text and its call.
    kept = call.kept(body)
    called = _chat(made.model_dump())
    assert kept.messages[-1] == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [called],
    }
    # Continued with the call's output, or sent whole with the output fed back: the same.
    output = {"type": "function_call_output", "call_id": made.call_id, "output": "12:00"}
    follow = _read(kept.messages, input=[output], tool_choice="none")
    asked = {"role": "user", "content": "What time is it in Paris?"}
    whole = _read(input=[asked, *body["output"], output], tool_choice="none")
    messages = follow.request.body.messages
    assert whole.request.body.messages == messages
    assert [(m.role, m.content) for m in messages[1:]] == [
        ("assistant", "Let me look."),
        ("tool", "12:00"),
    ]
    assert [c.id for c in messages[1].tool_calls or []] == [made.call_id]
    # Calls with nothing before them but space: the calls only.
    only = response_of(call.echo, [_result(call.request.body, " \n" + HERMES)])
    assert [item["type"] for item in only["output"]] == ["function_call"]


def _without_logprobs(output: list[Any]) -> list[dict[str, Any]]:
    items = [item if isinstance(item, dict) else item.model_dump() for item in output]
    for item in items:
        for part in item.get("content") or []:
            part["logprobs"] = []
    return items


def _spelled(pieces: tuple[str, ...], text: str, calls: bool) -> list[str]:
    """The tokens (a piece each) whose log-probabilities a message has: all of them, or
    before calls, those that begin in its text."""
    starts = [sum(map(len, pieces[:i])) for i in range(len(pieces))]
    return [p for p, at in zip(pieces, starts, strict=True) if not calls or at < len(text)]


def test_under_auto_a_streamed_response_is_the_whole_one_its_text_as_it_comes() -> None:
    call = _read(include=["message.output_text.logprobs"])
    answers = {  # the text, and how it ends
        "Let me look.\n" + HERMES: "stop",
        " \n" + HERMES: "stop",  # only space before the call: no message
        "It is noon. No <tool here.": "stop",
        'Hi <tool_call>\n{"name": "get_t': "length",  # cut mid-call: text
    }
    for text, reason in answers.items():
        whole = response_of(call.echo, [_result(call.request.body, text, reason)])
        expected = [
            Response.model_validate(whole).output[i].model_dump()
            for i in range(len(whole["output"]))
        ]
        for cut in range(1, len(text), 5):  # split in many places, into two pieces and three
            for pieces in ((text[:cut], text[cut:]), (text[:cut], "", text[cut:])):
                events, kept = _streamed(call, reason, *pieces)
                last = events[-1].response
                assert _without_logprobs(last.output) == _without_logprobs(expected), (text, cut)
                assert _without_logprobs(kept[0]["output"]) == _without_logprobs(whole["output"])
                said = "".join(e.delta for e in events if e.type == "response.output_text.delta")
                assert said == last.output_text
                if last.output[0].type == "message":  # each token's logprob, once
                    tokens = [t.token for t in last.output[0].content[0].logprobs or []]
                    assert tokens == _spelled(pieces, last.output_text, len(last.output) > 1)
                added = [e.output_index for e in events if e.type == "response.output_item.added"]
                assert added == list(range(len(expected)))
    # Its text as it comes, less where a call may be beginning and the space before it.
    events, _ = _streamed(call, "stop", "Let me ", "look.\n<tool", HERMES[5:])
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["Let me", " look."]
    assert [e.type for e in events][2:5] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
