"""The front door's Responses API (`/v1/responses`): a body read as a chat request, and the
answer, whole or streamed, in that API's shape, read back with the SDK's own types."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway import routes, sse
from gateway.door import FrontDoor
from gateway.response_events import ResponseEvents
from gateway.response_store import ResponseStore
from gateway.responses import (
    LOGPROBS,
    ResponseCall,
    read_response_call,
    response_of,
)
from llmq.streaming import Delta
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.request import MAX_MESSAGES, ChatMessage
from schemas.result import (
    ChatCompletion,
    Choice,
    ChoiceLogprobs,
    InferenceResult,
    PromptTokensDetails,
    TokenLogprob,
    TopLogprob,
    Usage,
)

CATALOG = Catalog.builtin()
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


HISTORY = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue"}]


def _read(history: list[dict[str, Any]] | None = None, **body: Any) -> ResponseCall:
    data = {"model": "smollm2-135m", "input": "Name a colour.", **body}
    return read_response_call(
        data,
        tenant="acme",
        lane=None,
        default_lane="interactive",
        catalog=CATALOG,
        timeout_s=60,
        history=history or [],
    )


def _refused(code: ErrorCode, **body: Any) -> str:
    with pytest.raises(LlmqError) as caught:
        _read(**body)
    assert caught.value.code is code
    return caught.value.message


def test_a_string_input_is_the_users_message_after_the_instructions() -> None:
    call = _read(instructions="Be brief.", max_output_tokens=5, temperature=0, top_p=0.5)
    body = call.request.body
    assert [(m.role, m.content) for m in body.messages] == [
        ("system", "Be brief."),
        ("user", "Name a colour."),
    ]
    assert (body.max_tokens, body.temperature, body.top_p) == (5, 0.0, 0.5)
    assert not body.logprobs and body.response_format is None
    assert call.asked["instructions"] == "Be brief." and call.asked["max_output_tokens"] == 5


def test_messages_of_text_parts_in_every_role() -> None:
    given = [
        {"role": "developer", "content": "Answer in one word."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Sky "},
                {"type": "input_text", "text": "colour?"},
            ],
        },
    ]
    body = _read(input=given).request.body
    assert [(m.role, m.content) for m in body.messages] == [
        ("system", "Answer in one word."),
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "Sky \ncolour?"),
    ]


def test_logprobs_come_when_included_and_the_text_format_is_the_response_format() -> None:
    body = _read(include=[LOGPROBS], top_logprobs=3).request.body
    assert (body.logprobs, body.top_logprobs) == (True, 3)
    assert not _read(top_logprobs=3).request.body.logprobs  # as OpenAI: only when included
    fmt = {"type": "json_schema", "name": "verdict", "schema": SCHEMA, "strict": True}
    schema = _read(text={"format": fmt}).request.body.json_format
    assert schema is not None and schema.json_schema is not None
    assert (schema.json_schema.name, schema.json_schema.schema_) == ("verdict", SCHEMA)
    as_json = _read(text={"format": {"type": "json_object"}}).request.body.json_format
    assert as_json is not None and as_json.type == "json_object"
    assert (
        _read(text={"format": {"type": "text"}, "verbosity": "medium"}).request.body.json_format
        is None
    )


def test_llmqs_own_fields_and_openais_ignored_ones_are_read() -> None:
    call = _read(lane="batch", cache="off", store=True, metadata={"k": "v"}, user="u", tools=[])
    assert (call.request.lane.value, call.request.cache.value) == ("batch", "off")
    vllms = _read(ignore_eos=True, top_k=4, min_tokens=2).request.body
    assert vllms.ignore_eos and vllms.vllm_sampling == {"top_k": 4, "min_tokens": 2}
    assert call.asked["metadata"] == {"k": "v"}
    assert _read(service_tier="flex", tool_choice="auto").request.lane.value == "batch"
    for options in ({"include_obfuscation": False}, {"include_obfuscation": True}):
        assert _read(stream=True, stream_options=options).request.body.stream


@pytest.mark.parametrize(
    ("body", "code", "why"),
    [
        ({"conversation": "conv_1"}, ErrorCode.UNSUPPORTED, "conversation"),
        ({"reasoning": {"effort": "low"}}, ErrorCode.UNSUPPORTED, "reasoning"),
        ({"tools": [{"type": "web_search"}]}, ErrorCode.UNSUPPORTED, "tools"),
        ({"tool_choice": "required"}, ErrorCode.INVALID_REQUEST, "tool_choice: needs tools"),
        ({"background": True}, ErrorCode.UNSUPPORTED, "background"),
        ({"include": ["reasoning.encrypted_content"]}, ErrorCode.UNSUPPORTED, "include"),
        ({"truncation": "auto"}, ErrorCode.UNSUPPORTED, "truncation"),
        ({"stream_options": {"include_usage": True}}, ErrorCode.UNSUPPORTED, "stream_options"),
        ({"messages": []}, ErrorCode.UNSUPPORTED, "messages"),
        ({"input": None}, ErrorCode.INVALID_REQUEST, "input must be a string or a list"),
        ({"input": []}, ErrorCode.INVALID_REQUEST, "input must be a string or a list"),
        ({"input": ["hi"]}, ErrorCode.INVALID_REQUEST, "each input item must be an object"),
        ({"input": [{"type": "reasoning", "summary": []}]}, ErrorCode.UNSUPPORTED, "'reasoning'"),
        ({"input": [{"role": "tool", "content": "x"}]}, ErrorCode.UNSUPPORTED, "role 'tool'"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            ErrorCode.UNSUPPORTED,
            "'input_image'",
        ),
        ({"instructions": 3}, ErrorCode.INVALID_REQUEST, "instructions must be a string"),
        ({"top_logprobs": 21}, ErrorCode.INVALID_REQUEST, "top_logprobs must be an integer"),
        ({"text": {"format": {"type": "xml"}}}, ErrorCode.INVALID_REQUEST, "text.format.type"),
        ({"text": {"colour": "red"}}, ErrorCode.INVALID_REQUEST, "format (and verbosity) only"),
        ({"max_output_tokens": 0}, ErrorCode.INVALID_REQUEST, "max_output_tokens"),
        ({"model": "gpt-9"}, ErrorCode.UNKNOWN_MODEL, "gpt-9"),
    ],
)
def test_what_is_not_served_is_refused_by_name(
    body: dict[str, Any], code: ErrorCode, why: str
) -> None:
    assert why in _refused(code, **body)


def test_the_chat_readers_refusals_name_this_bodys_fields() -> None:
    bad = [{"role": "user", "content": "fine"}, {"role": "user", "content": 5}]
    assert "input.1.content" in _refused(ErrorCode.INVALID_REQUEST, input=bad, instructions="x")
    assert "input.1.content" in _refused(ErrorCode.INVALID_REQUEST, input=bad)
    long = "x" * 200_001
    assert "instructions" in _refused(ErrorCode.INVALID_REQUEST, instructions=long)
    nameless = {"format": {"type": "json_schema", "schema": SCHEMA}}
    why = _refused(ErrorCode.INVALID_REQUEST, text=nameless)
    assert why.startswith("text.format.name") and "response_format" not in why


@pytest.mark.parametrize(
    ("body", "code", "why"),
    [
        ({"model": "messages.7"}, ErrorCode.UNKNOWN_MODEL, "the model 'messages.7' does not"),
        ({"model": "max_tokens"}, ErrorCode.UNKNOWN_MODEL, "the model 'max_tokens' does not"),
        ({"lane": "messages.3"}, ErrorCode.INVALID_REQUEST, "'messages.3' is not a valid Lane"),
        ({"cache": "messages.12"}, ErrorCode.INVALID_REQUEST, "'messages.12' is not a valid"),
        (
            {"instructions": "hi", "lane": "messages.1"},
            ErrorCode.INVALID_REQUEST,
            "'messages.1' is not a valid Lane",
        ),
    ],
)
def test_a_refusal_quotes_the_bodys_own_values_as_they_came(
    body: dict[str, Any], code: ErrorCode, why: str
) -> None:
    """Fields were renamed over the whole message, values too: one that looked like a message
    past the last was a 500 (IndexError), others were reported as other values."""
    assert why in _refused(code, **body)


def test_a_validation_refusal_names_this_bodys_field_as_its_param() -> None:
    bad = [{"role": "user", "content": "fine"}, {"role": "user", "content": 5}]
    nameless = {"format": {"type": "json_schema", "schema": SCHEMA}}
    misnamed = [{**TIME_TOOL[0], "name": "get time"}]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": bad, "instructions": "x"}, "input[1].content"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"text": nameless}, "text.format.name"),
        ({"tools": misnamed, "tool_choice": "required"}, "tools[0].name"),
        ({"instructions": "x" * 200_001}, "instructions"),
        ({"history": [{"role": "user", "content": 5}]}, "previous_response_id"),
    ]
    for body, param in cases:
        with pytest.raises(LlmqError) as caught:
            _read(**body)
        assert caught.value.param == param, body


ANSWERED = {"type": "function_call_output", "call_id": "call_x", "output": "up"}
"""An output answering no call made before it."""
MISCALLED = {"type": "function_call", "call_id": "call_x", "name": "get time", "arguments": "{}"}
IMAGE = {"type": "input_image", "image_url": "https://example.com/x.png"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"instructions": 5}, "instructions"),
        ({"input": 5}, "input"),
        ({"input": ["Hi"]}, "input[0]"),
        ({"input": [{"type": "reasoning"}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "up"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": ["x", IMAGE]}]}, "input[0].content[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}, IMAGE]}]},
            "input[0].content[1].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
        ),
        ({"input": [ANSWERED]}, "input[0].call_id"),
        ({"input": [{"role": "user", "content": "Hi"}, MISCALLED]}, "input[1].name"),
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"text": {"style": "terse"}}, "text"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"background": True}, "background"),
    ],
)
def test_a_refusal_of_the_bodys_own_checks_names_its_field_as_param(
    body: dict[str, Any], param: str
) -> None:
    """Their messages named the field and `param` was null (the SDK's error.param)."""
    with pytest.raises(LlmqError) as caught:
        _read(**body)
    assert caught.value.param == param


@pytest.mark.parametrize(
    "body",
    [
        {"stream": "true"},
        {"stream": 1},
        {"max_output_tokens": True},
        {"max_output_tokens": "5"},
        {"max_output_tokens": 2.0},
        {"max_output_tokens": 0},
    ],
)
def test_stream_and_max_output_tokens_are_held_to_their_types(body: dict[str, Any]) -> None:
    """Chat's reader took "true" and 1 for true and true or "5" for a number, which the
    response echoed as sent."""
    [name] = body
    with pytest.raises(LlmqError) as caught:
        _read(**body)
    assert (caught.value.code, caught.value.param) == (ErrorCode.INVALID_REQUEST, name)


@pytest.mark.parametrize(("given", "used"), [({}, 256), ({"max_output_tokens": 9}, 9)])
def test_the_response_echoes_the_max_output_tokens_used(given: dict[str, Any], used: int) -> None:
    """It echoed the body's value, null where none was given although 256 were used."""
    call = _read(**given)
    assert call.request.body.max_tokens == used
    read = Response.model_validate(response_of(call.echo, [_result(call, "stop")]))
    assert read.max_output_tokens == used


def test_a_refusal_of_the_whole_body_names_this_bodys_fields() -> None:
    """ChatBody's own checks name chat's fields in their text: text.format is this body's."""
    with pytest.raises(LlmqError) as caught:
        _read(tools=TIME_TOOL, tool_choice="required", text={"format": {"type": "json_object"}})
    assert "no text.format with them" in caught.value.message
    assert "response_format" not in caught.value.message
    with pytest.raises(LlmqError) as caught:
        _read(max_output_tokens=3, min_tokens=9)
    assert "min_tokens (9) is more than max_output_tokens (3)" in caught.value.message


def test_a_refusal_of_the_whole_body_quotes_a_name_the_caller_chose_as_it_came() -> None:
    """A tool the caller named after a chat field is not renamed as if it were that field."""
    chosen = {"type": "function", "name": "max_tokens"}
    with pytest.raises(LlmqError) as caught:
        _read(tools=TIME_TOOL, tool_choice=chosen)
    assert "'max_tokens'" in caught.value.message, caught.value.message


def test_a_conversation_continued_past_the_cap_is_refused_naming_previous_response_id() -> None:
    """It passed to chat's cap, whose 400 named `messages`, a field this body has not."""
    with pytest.raises(LlmqError) as caught:
        _read(HISTORY * (MAX_MESSAGES // 2), input="And?", instructions="Be brief.")
    assert (caught.value.code, caught.value.param) == (
        ErrorCode.INVALID_REQUEST,
        "previous_response_id",
    )
    assert caught.value.message == (
        f"previous_response_id continues a conversation of {MAX_MESSAGES} messages: with the "
        f"input's 1 and the instructions, {MAX_MESSAGES + 2}, more than the {MAX_MESSAGES} "
        "messages a request holds; start a new conversation (without previous_response_id)"
    )
    fits = _read(HISTORY * (MAX_MESSAGES // 2 - 1), input="And?", instructions="Be brief.")
    assert len(fits.request.body.messages) == MAX_MESSAGES


def test_a_continued_response_follows_its_conversation_but_not_its_instructions() -> None:
    call = _read(HISTORY, input="And the sea?", instructions="Be brief.", previous_response_id="r")
    assert [(m.role, m.content) for m in call.request.body.messages] == [
        ("system", "Be brief."),
        ("user", "Name a colour."),
        ("assistant", "Blue"),
        ("user", "And the sea?"),
    ]
    assert call.conversation == [*HISTORY, {"role": "user", "content": "And the sea?"}]
    assert call.asked["previous_response_id"] == "r" and call.store
    assert not _read(store=False).store
    bad = [{"role": "user", "content": "fine"}, {"role": "user", "content": 5}]
    why = _refused(ErrorCode.INVALID_REQUEST, history=HISTORY, input=bad, instructions="x")
    assert "input.1.content" in why


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ({"role": ["user"], "content": "hi"}, ErrorCode.UNSUPPORTED),  # unhashable: a 500
        ({"type": ["message"], "role": "user", "content": "hi"}, ErrorCode.INVALID_REQUEST),
        (
            {"role": "user", "content": [{"type": ["input_text"], "text": "hi"}]},
            ErrorCode.UNSUPPORTED,
        ),
        (
            {"role": "user", "content": [{"type": "input_text", "text": None}]},
            ErrorCode.INVALID_REQUEST,
        ),
    ],
)
def test_an_input_item_of_the_wrong_type_is_refused_not_a_500(
    item: dict[str, Any], code: ErrorCode
) -> None:
    """A text part's null reached the model as "None"; a list for a name was a TypeError."""
    _refused(code, input=[item])


def test_a_non_object_body_is_refused() -> None:
    with pytest.raises(LlmqError, match="a JSON object"):
        read_response_call(
            [], tenant="a", lane=None, default_lane="x", catalog=CATALOG, timeout_s=1
        )


def _result(
    call: ResponseCall, finish: str, logprobs: list[TokenLogprob] | None = None
) -> InferenceResult:
    choice = Choice(
        message=ChatMessage(role="assistant", content="Blue"),
        finish_reason=finish,
        logprobs=None if logprobs is None else ChoiceLogprobs(content=logprobs),
    )
    usage = Usage(
        prompt_tokens=9,
        completion_tokens=2,
        total_tokens=11,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=4),
    )
    response = ChatCompletion(id="x", created=7, model="m", choices=[choice], usage=usage)
    cid = call.request.correlation_id
    return InferenceResult(correlation_id=cid, tenant="t", status="ok", response=response)


def test_the_answer_is_a_response_as_the_sdk_reads_it() -> None:
    call = _read(instructions="Be brief.", metadata={"k": "v"}, include=[LOGPROBS], top_logprobs=1)
    token = TokenLogprob(
        token="Blue", logprob=-0.1, top_logprobs=[TopLogprob(token="Blue", logprob=-0.1)]
    )
    body = response_of(call.echo, [_result(call, "stop", [token])])
    cid = call.request.correlation_id
    read = Response.model_validate(body)
    assert (read.id, read.object, read.model, read.created_at) == (
        f"resp_{cid}",
        "response",
        "m",
        7,
    )
    assert (read.status, read.incomplete_details, read.error) == ("completed", None, None)
    assert read.output_text == "Blue"
    [message] = read.output
    assert message.type == "message" and message.role == "assistant" and message.id == f"msg_{cid}"
    [part] = message.content
    assert part.type == "output_text" and part.logprobs is not None
    assert [(t.token, t.logprob, t.bytes) for t in part.logprobs] == [("Blue", -0.1, list(b"Blue"))]
    assert [t.token for t in part.logprobs[0].top_logprobs] == ["Blue"]
    assert read.usage is not None
    assert (read.usage.input_tokens, read.usage.output_tokens, read.usage.total_tokens) == (
        9,
        2,
        11,
    )
    assert read.usage.input_tokens_details.cached_tokens == 4
    assert (read.instructions, read.metadata, read.top_logprobs) == ("Be brief.", {"k": "v"}, 1)
    assert read.tools == [] and read.text is not None and read.text.format is not None
    assert read.text.format.type == "text"
    assert (body["store"], read.previous_response_id) == (True, None)
    assert body["llmq"]["correlation_id"] == cid


def test_a_stored_response_keeps_its_conversation_with_the_answer() -> None:
    call = _read(HISTORY, input="And the sea?", instructions="Be brief.", previous_response_id="r")
    body = response_of(call.echo, [_result(call, "stop")])
    kept = call.kept(body)
    assert kept.response is body and Response.model_validate(body).previous_response_id == "r"
    assert kept.messages == [
        *HISTORY,
        {"role": "user", "content": "And the sea?"},
        {"role": "assistant", "content": "Blue"},
    ]


def test_a_stored_response_keeps_its_turn_after_those_it_continues() -> None:
    """Its turn begins after the conversation continued, or at its last message where the
    input's call joined that answer; continuing one stored whole (no turns), all of it."""
    called = {"type": "function_call", "call_id": "call_a", "name": "ping", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "call_a", "output": "up"}
    kept = []
    for given in ("And the sea?", [called, output]):
        for chain in (("resp_a",), ()):
            call = read_response_call(
                {"model": "smollm2-135m", "input": given, "previous_response_id": "resp_a"},
                tenant="acme",
                lane=None,
                catalog=CATALOG,
                timeout_s=60,
                history=HISTORY,
                chain=chain,
            )
            body = response_of(call.echo, [_result(call, "stop")])
            kept.append(call.kept(body))
    starts = [(k.turns[:-1], k.start) for k in kept]
    assert starts == [(("resp_a",), 2), ((), 0), (("resp_a",), 1), ((), 0)]
    assert all(k.turns[-1] == k.response["id"] for k in kept)
    assert kept[2].messages[1]["tool_calls"] and kept[2].messages[1]["content"] == "Blue"


def test_an_answer_cut_at_max_output_tokens_is_incomplete() -> None:
    call = _read(max_output_tokens=2)
    read = Response.model_validate(response_of(call.echo, [_result(call, "length")]))
    assert read.status == "incomplete" and read.incomplete_details is not None
    assert read.incomplete_details.reason == "max_output_tokens"
    assert read.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert read.max_output_tokens == 2


def test_a_response_redis_cannot_store_is_answered_saying_it_is_not_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = _read()
    body = response_of(call.echo, [_result(call, "stop")])

    async def main() -> None:
        away = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
        door = SimpleNamespace(responses=ResponseStore(away, 60))
        await routes._keep(cast(FrontDoor, door), call, body)
        await away.aclose()

    with caplog.at_level(logging.WARNING, "gateway.routes"):
        asyncio.run(main())
    assert body["store"] is False
    assert f"response {body['id']} is not stored" in caplog.text


async def _pieces(*pieces: Delta) -> AsyncIterator[Delta]:
    for piece in pieces:
        yield piece


def test_a_streamed_response_is_openais_events_in_order() -> None:
    call = _read(include=[LOGPROBS], top_logprobs=0, max_output_tokens=3)
    shape = ResponseEvents(call.echo, 7, "m")
    token = TokenLogprob(token="Bl", logprob=-0.5, top_logprobs=[])
    usage = Usage(prompt_tokens=9, completion_tokens=3, total_tokens=12)
    rest = _pieces(
        Delta("", 2, logprobs=[token]), Delta("ue", 2, "length", usage, logprobs=[token])
    )

    kept: list[dict[str, Any]] = []

    async def keep(response: dict[str, Any]) -> None:
        kept.append(response)

    async def main() -> list[str]:
        first = Delta("Bl", 0, logprobs=[token])
        return [e async for e in sse.response_events(shape, first, rest, None, keep=keep)]

    lines = asyncio.run(main())
    assert sse.DONE not in lines  # as OpenAI's: the last event ends it
    reader = TypeAdapter(ResponseStreamEvent)
    events = []
    for line in lines:
        name, body = line.split("\n", 1)
        event = reader.validate_python(json.loads(body.removeprefix("data: ")))
        assert name == f"event: {event.type}"
        events.append(event)
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(10))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [(d.delta, len(d.logprobs)) for d in deltas] == [("Bl", 1), ("ue", 2)]  # one held
    done = events[6]
    assert done.type == "response.output_text.done" and done.text == "Blue"
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.output_text == "Blue" and last.response.status == "incomplete"
    assert last.response.usage is not None and last.response.usage.output_tokens == 3
    assert [Response.model_validate(k) for k in kept] == [last.response]  # kept as sent


TIME_TOOL = [{"type": "function", "name": "get_time", "parameters": {"type": "object"}}]


@pytest.mark.parametrize("code", [ErrorCode.ENGINE_ERROR, ErrorCode.EXPIRED])
@pytest.mark.parametrize("tools", [None, "auto", "required"])
def test_a_response_stream_that_fails_ends_as_openais_do(
    code: ErrorCode, tools: str | None
) -> None:
    """An error event (the SDK yields it), then the response failed with what it had shown,
    not stored: not chat's error body, which the SDK raises on. Plain text, and answers
    that may be calls (their text held back, or shown as it comes)."""
    body: dict[str, Any] = {} if tools is None else {"tools": TIME_TOOL, "tool_choice": tools}
    call = _read(**body)
    shape = ResponseEvents(call.echo, 7, "m", call.request.body if tools else None)

    async def failing() -> AsyncIterator[Delta]:
        yield Delta(" day", 5)
        raise LlmqError(code, "the engine went away")

    async def main() -> list[str]:
        return [e async for e in sse.response_events(shape, Delta("Good ", 0), failing())]

    reader = TypeAdapter(ResponseStreamEvent)
    events = []
    for line in asyncio.run(main()):
        name, body_line = line.split("\n", 1)
        events.append(reader.validate_python(json.loads(body_line.removeprefix("data: "))))
        assert name == f"event: {events[-1].type}"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    error, failed = events[-2:]
    assert error.type == "error" and (error.code, error.message) == (
        code.value,
        "the engine went away",
    )
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error is not None and failed.response.error.code == "server_error"
    assert (failed.response.model_extra or {})["store"] is False
    shown = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert failed.response.output_text == shown
    if tools is None:
        assert shown == "Good  day"
