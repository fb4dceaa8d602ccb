"""Tool calls (schemas.tools, and where requests carry them): which bodies may ask for them,
the JSON schema the engine is held to, the answer's text read back as calls with stable
ids, the fingerprint that keeps tool conversations apart, and the chunks of a stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from openai.types.chat import ChatCompletion as SdkCompletion
from openai.types.chat import ChatCompletionChunk
from pydantic import ValidationError

from gateway import sse
from gateway.openai import Chunks, completion
from gateway.responses import read_response_call
from gateway.text import read_text_call
from llmq.streaming import Delta
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.fingerprint import fingerprint
from schemas.request import ChatBody, ChatMessage, InferenceRequest
from schemas.result import (
    ChatCompletion,
    Choice,
    ChoiceLogprobs,
    InferenceResult,
    TokenLogprob,
    Usage,
)
from schemas.tools import (
    MAX_TOOLS,
    Tool,
    finish_reason,
    output_schema,
    tool_calls,
)

ZONE = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "get_time", "parameters": ZONE}},
    {"type": "function", "function": {"name": "ping", "description": "Is it up?"}},
]
NAMED = {"type": "function", "function": {"name": "get_time"}}
ASK = [{"role": "user", "content": "What time is it in Paris?"}]


def _body(**fields: Any) -> ChatBody:
    return ChatBody.model_validate({"messages": ASK, "tools": TOOLS, **fields})


def _tools() -> list[Tool]:
    return [Tool.model_validate(t) for t in TOOLS]


def test_a_body_with_tools_says_what_the_answer_does_with_them() -> None:
    assert _body(tool_choice="required").calls_tools
    assert _body(tool_choice=NAMED).calls_tools
    assert not _body(tool_choice="none").calls_tools
    assert not ChatBody.model_validate({"messages": ASK}).calls_tools
    assert _body().tool_choice == "auto" == _body(tool_choice=None).tool_choice  # OpenAI's default
    with pytest.raises(ValidationError, match="needs tools"):
        ChatBody.model_validate({"messages": ASK, "tool_choice": "required"})
    with pytest.raises(ValidationError, match="'nope', which is not one of the tools"):
        _body(tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(ValidationError, match="no response_format"):
        _body(tool_choice="required", response_format={"type": "json_object"})
    auto = _body(tool_choice="auto")  # text or calls: read once whole, held by a grammar
    assert auto.calls_tools and auto.tool_schema is None and auto.tool_grammar is not None
    assert _body(tool_choice="required").tool_grammar is None
    with pytest.raises(ValidationError, match="no response_format"):
        _body(tool_choice="auto", response_format={"type": "json_object"})
    big = {"type": "object", "description": "x" * 40_000}
    with pytest.raises(ValidationError, match="parameters schema is"):
        _body(tools=[{"type": "function", "function": {"name": "f", "parameters": big}}])


def test_messages_carry_calls_and_results_where_they_belong() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "ping", "arguments": "{}"}}
    asked = ChatMessage.model_validate({"role": "assistant", "content": None, "tool_calls": [call]})
    assert asked.content == "" and asked.tool_calls is not None
    assert asked.text == "c1ping{}"  # what the model reads of it: id, name, arguments
    answered = ChatMessage(role="tool", content="pong", tool_call_id="c1")
    assert answered.model_dump() == {"role": "tool", "content": "pong", "tool_call_id": "c1"}
    assert ChatMessage(role="user", content="hi").model_dump() == {"role": "user", "content": "hi"}
    with pytest.raises(ValidationError, match="tool_call_id"):
        ChatMessage(role="tool", content="pong")
    with pytest.raises(ValidationError, match="tool_call_id"):
        ChatMessage(role="user", content="hi", tool_call_id="c1")
    with pytest.raises(ValidationError, match="belong to an assistant"):
        ChatMessage.model_validate({"role": "user", "content": "x", "tool_calls": [call]})
    with pytest.raises(ValidationError, match="content"):
        ChatMessage.model_validate({"role": "user"})


def test_a_tool_message_answers_a_call_made_before_it() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "ping", "arguments": "{}"}}
    asked = {"role": "assistant", "content": None, "tool_calls": [call]}
    answered = {"role": "tool", "tool_call_id": "c1", "content": "pong"}
    assert len(_body(messages=[*ASK, asked, answered], tool_choice="none").messages) == 3
    for orphan in (
        [*ASK, answered],
        [*ASK, answered, asked],
        [*ASK, asked, {**answered, "tool_call_id": "c2"}],
    ):
        with pytest.raises(ValidationError, match=r"messages\.\d\.tool_call_id '.*' names no call"):
            _body(messages=orphan, tool_choice="none")


def test_the_engine_is_held_to_the_named_functions_arguments_or_to_a_list_of_calls() -> None:
    tools = _tools()
    assert output_schema(tools, _body(tool_choice=NAMED).tool_choice, None) == ZONE
    assert output_schema(tools, "none", None) is None
    required = output_schema(tools, "required", None)
    assert required is not None and required["maxItems"] == MAX_TOOLS
    names = [c["properties"]["name"]["enum"] for c in required["items"]["anyOf"]]
    assert names == [["get_time"], ["ping"]]
    no_arguments = required["items"]["anyOf"][1]["properties"]["parameters"]
    assert no_arguments == {"type": "object", "properties": {}}
    one = output_schema(tools, "required", False)
    assert one is not None and one["maxItems"] == 1
    assert _body(tool_choice="required", parallel_tool_calls=False).tool_schema == one


def test_the_answers_text_is_read_back_as_calls_with_ids_of_their_own() -> None:
    tools, named = _tools(), _body(tool_choice=NAMED).tool_choice
    [call] = tool_calls(tools, named, '{"zone":"CET"}', "ctx") or []
    assert (call.function.name, call.function.arguments) == ("get_time", '{"zone":"CET"}')
    text = '[{"name":"get_time","parameters":{"zone":"UTC"}},{"name":"ping","parameters":{}}]'
    calls = tool_calls(tools, "required", text, "ctx") or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_time", {"zone": "UTC"}),
        ("ping", {}),
    ]
    # The same conversation and text: the same ids (a cache hit, a stream and its result).
    assert tool_calls(tools, "required", text, "ctx") == calls
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    assert [c.id for c in tool_calls(tools, "required", text, "other") or []] != [
        c.id for c in calls
    ]
    # No calls, and no failure, from text that is none: cut short, or not held to the
    # schema (a remote engine's): the answer is then that text.
    for no_calls in (
        '[{"name":"get_ti',
        "[]",
        '[{"name":5,"parameters":{}}]',
        '[{"name":"bad name","parameters":{}}]',
        '{"name":"ping","parameters":{}}',
        json.dumps([{"name": "ping", "parameters": {}}] * (MAX_TOOLS + 1)),
    ):
        assert tool_calls(tools, "required", no_calls, "ctx") is None, no_calls
    assert tool_calls(tools, named, '{"zone":"CE', "ctx") is None
    assert tool_calls(tools, "none", text, "ctx") is None
    assert finish_reason("required", calls, "stop") == "tool_calls"
    assert finish_reason(named, calls[:1], "stop") == "stop"  # as OpenAI's named call
    assert finish_reason("required", None, "length") == "length"


def _hermes(name: str, arguments: str, gap: str = "\n") -> str:
    return f'<tool_call>{gap}{{"name": "{name}", "arguments": {arguments}}}{gap}</tool_call>'


def test_under_auto_the_answer_is_text_or_calls_in_hermess_syntax() -> None:
    tools = _tools()
    text = "Let me look. " + _hermes("get_time", '{"zone": "UTC"}') + _hermes("ping", "{}", "")
    text += "\n"  # whitespace after the calls, as a model may end
    calls = tool_calls(tools, "auto", text, "ctx") or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_time", {"zone": "UTC"}),
        ("ping", {}),
    ]
    assert tool_calls(tools, "auto", text, "ctx") == calls  # the same ids wherever read
    assert finish_reason("auto", calls, "stop") == "tool_calls"
    # Text, a call cut by max_tokens, or one of a function not offered: the answer is text.
    for no_calls in (
        "It is noon in Paris.",
        _hermes("get_time", '{"zone": "UTC"}')[:-5],
        _hermes("get_time", '{"zone": "UTC"}') + "<tool_call>\n{",
        _hermes("nope", "{}"),
        _hermes("get_time", '{"zone": "UT}'),
        "<tool_call>[1]</tool_call>",
        _hermes("ping", "{}") + " and more",  # the grammar ends an answer with its calls
        "<tool_call>\n" + '{"name": "ping"}' + "\n</tool_call>",
    ):
        assert tool_calls(tools, "auto", no_calls, "ctx") is None, no_calls
    assert finish_reason("auto", None, "stop") == "stop"


def _request(body: ChatBody) -> InferenceRequest:
    return InferenceRequest(correlation_id="c", tenant="t", body=body)


def test_the_fingerprint_keeps_tools_calls_and_their_results_apart() -> None:
    def key(**fields: Any) -> str:
        return fingerprint(_request(ChatBody.model_validate({"messages": ASK, **fields})), "m")

    plain = key()
    assert key(tools=TOOLS, tool_choice="none") != plain
    assert key(tools=TOOLS, tool_choice="required") != key(tools=TOOLS, tool_choice=NAMED)
    assert key(tools=TOOLS, tool_choice="required", parallel_tool_calls=False) != key(
        tools=TOOLS, tool_choice="required"
    )
    call = {"id": "c1", "type": "function", "function": {"name": "ping", "arguments": "{}"}}

    def after(result: str) -> str:
        history = [
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": result},
        ]
        body = {"messages": history, "tools": TOOLS, "tool_choice": "none"}
        return fingerprint(_request(ChatBody.model_validate(body)), "m")

    assert after("up") != after("down")


def _result(body: ChatBody, text: str, reason: str = "stop") -> InferenceResult:
    calls = body.calls_in(text)
    message = ChatMessage(role="assistant", content=text, tool_calls=calls)
    choice = Choice(message=message, finish_reason=finish_reason(body.tool_choice, calls, reason))
    usage = Usage(prompt_tokens=9, completion_tokens=6, total_tokens=15)
    response = ChatCompletion(id="x", created=1, model="m", choices=[choice], usage=usage)
    return InferenceResult(correlation_id="c", tenant="t", status="ok", response=response)


async def _pieces(*pieces: Delta) -> AsyncIterator[Delta]:
    for piece in pieces:
        yield piece


def test_a_streamed_answer_of_calls_sends_them_whole_as_the_answer_holds_them() -> None:
    body = _body(tool_choice="required", parallel_tool_calls=False)
    text = '[{"name":"get_time","parameters":{"zone":"UTC"}}]'
    whole = SdkCompletion.model_validate(completion(_result(body, text)))
    [answer] = whole.choices
    assert answer.message.content is None and answer.finish_reason == "tool_calls"
    chunks = Chunks("c", 1, "m", include_usage=False, body=body)
    rest = _pieces(
        Delta(text[10:], 10, "stop", Usage(prompt_tokens=9, completion_tokens=6, total_tokens=15))
    )

    async def main() -> list[str]:
        return [e async for e in sse.events(chunks, Delta(text[:10], 0), rest)]

    events = asyncio.run(main())
    assert events[-1] == sse.DONE
    read = [ChatCompletionChunk.model_validate(json.loads(e[6:])) for e in events[:-1]]
    assert [c.choices[0].delta.role for c in read] == ["assistant", None, None]
    assert all(not c.choices[0].delta.content for c in read)  # the JSON is not sent as text
    [streamed] = read[1].choices[0].delta.tool_calls or []
    [called] = answer.message.tool_calls or []
    assert streamed.index == 0 and streamed.function is not None
    assert (streamed.id, streamed.function.name, streamed.function.arguments) == (
        called.id,
        called.function.name,  # type: ignore[union-attr]
        called.function.arguments,  # type: ignore[union-attr]
    )
    assert read[2].choices[0].finish_reason == "tool_calls"


def _streamed(body: ChatBody, *texts: str, reason: str = "stop") -> list[ChatCompletionChunk]:
    """The chunks of an answer arriving as these pieces, read with the SDK's types (each
    piece one token, its log-probability its length, where the body asks for them)."""
    offsets = [sum(len(t) for t in texts[:i]) for i in range(len(texts))]
    usage = Usage(prompt_tokens=9, completion_tokens=6, total_tokens=15)
    tokens = [[TokenLogprob(token=t, logprob=-len(t))] if body.logprobs else None for t in texts]
    pieces = [Delta(t, o, logprobs=lp) for t, o, lp in zip(texts, offsets, tokens, strict=True)]
    pieces[-1] = Delta(texts[-1], offsets[-1], reason, usage, logprobs=tokens[-1])
    chunks = Chunks("c", 1, "m", include_usage=False, body=body)

    async def main() -> list[str]:
        return [e async for e in sse.events(chunks, pieces[0], _pieces(*pieces[1:]))]

    events = asyncio.run(main())
    assert events[-1] == sse.DONE
    return [ChatCompletionChunk.model_validate(json.loads(e[6:])) for e in events[:-1]]


def test_under_auto_text_streams_as_it_comes_and_calls_come_whole_after_it() -> None:
    body = _body(tool_choice="auto")
    call = _hermes("get_time", '{"zone": "UTC"}')
    text = "Let me look. " + call
    pieces = ("Let me ", "look. <tool", "_call>", call[len("<tool_call>") :])
    read = _streamed(body, *pieces)
    deltas = [c.choices[0].delta for c in read]
    # Its text as it comes, less where a call may be beginning ("<tool") and the space
    # before it; then the calls, each whole, as the whole answer has them.
    assert [d.content for d in deltas[1:3]] == ["Let me", " look."]
    whole = SdkCompletion.model_validate(completion(_result(body, text))).choices[0]
    assert whole.message.content == "Let me look." and whole.finish_reason == "tool_calls"
    [streamed] = deltas[3].tool_calls or []
    [called] = whole.message.tool_calls or []
    assert (streamed.id, streamed.function and streamed.function.arguments) == (
        called.id,
        called.function.arguments,  # type: ignore[union-attr]
    )
    assert read[-1].choices[0].finish_reason == "tool_calls"
    # Text that turns out not to begin a call is sent once that is certain, or at the end.
    read = _streamed(body, "Use <tool", "s> now. <to", "o")
    contents = [c.choices[0].delta.content for c in read[1:-1]]
    assert contents == ["Use", " <tools> now.", " <too"]
    assert read[-1].choices[0].finish_reason == "stop"


def _spelling(tokens: Sequence[str], choice: Any) -> list[str]:
    """The tokens that begin within the choice's text: all of them, but for calls."""
    if not choice.message.tool_calls:
        return list(tokens)
    starts = [sum(map(len, tokens[:i])) for i in range(len(tokens))]
    text = choice.message.content or ""
    return [t for t, start in zip(tokens, starts, strict=True) if start < len(text)]


def test_under_auto_the_streamed_answer_is_the_whole_one_however_it_is_split() -> None:
    call = _hermes("get_time", '{"zone": "UTC"}')
    answers = {  # the text, and how it ends
        "It is noon. No <tool here.": "stop",
        "Sure.\n\n" + call + "\n" + _hermes("ping", "{}", "") + "\n": "stop",
        " \n " + call: "stop",  # only space before the call: no content
        'Hi <tool_call>\n{"name": "get_t': "length",  # cut mid-call: text
    }
    for logprobs in (False, True):
        body = _body(tool_choice="auto", logprobs=logprobs)
        for text, reason in answers.items():
            whole = SdkCompletion.model_validate(completion(_result(body, text, reason)))
            [choice] = whole.choices
            for cut in range(1, len(text), 3):  # every way into two pieces, and three
                for pieces in ((text[:cut], text[cut:]), (text[:cut], "", text[cut:])):
                    read = _streamed(body, *pieces, reason=reason)
                    deltas = [c.choices[0].delta for c in read]
                    said = "".join(d.content or "" for d in deltas) or None
                    calls = [c for d in deltas for c in d.tool_calls or []]
                    assert said == choice.message.content, (text, cut)
                    assert [c.id for c in calls] == [c.id for c in choice.message.tool_calls or []]
                    assert read[-1].choices[0].finish_reason == choice.finish_reason
                    sent = [c.choices[0].logprobs for c in read if c.choices[0].logprobs]
                    tokens = [t.token for lp in sent for t in lp.content or []]
                    # each once, those of the text before the calls alone (as OpenAI's are)
                    assert tokens == (_spelling(pieces, choice) if logprobs else [])


def test_n_answers_that_may_be_calls_stream_at_once_each_as_one_would() -> None:
    """n > 1: each choice's chunks, by its index, give its whole answer (text before its
    calls as it comes, the calls whole), however their pieces interleave; the usage
    summed at the end."""
    body = _body(tool_choice="auto", logprobs=True)
    texts = ["Let me look. " + _hermes("get_time", '{"zone": "UTC"}'), "It is noon."]
    usage = Usage(prompt_tokens=9, completion_tokens=6, total_tokens=15)
    split = [[t[:5], t[5:16], t[16:]] for t in texts]
    deltas = []
    for parts in split:
        at = [sum(map(len, parts[:i])) for i in range(len(parts))]
        tokens = [[TokenLogprob(token=p, logprob=-1.0)] for p in parts]
        made = [Delta(p, o, logprobs=lp) for p, o, lp in zip(parts, at, tokens, strict=True)]
        made[-1] = Delta(parts[-1], at[-1], "stop", usage, logprobs=tokens[-1])
        deltas.append(made)
    chunks = Chunks("c", 1, "m", include_usage=True, body=body)

    async def main() -> list[str]:
        streams = [_pieces(*made[1:]) for made in deltas]
        return [e async for e in sse.choices(chunks, [made[0] for made in deltas], streams)]

    events = asyncio.run(main())
    assert events[-1] == sse.DONE
    read = [ChatCompletionChunk.model_validate(json.loads(e[6:])) for e in events[:-1]]
    for index, text in enumerate(texts):
        [whole] = SdkCompletion.model_validate(completion(_result(body, text))).choices
        mine = [c.choices[0] for c in read if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        said = "".join(c.delta.content or "" for c in mine) or None
        calls = [
            (d.id, d.function and d.function.arguments)
            for c in mine
            for d in c.delta.tool_calls or []
        ]
        assert said == whole.message.content
        held = whole.message.tool_calls or []
        assert calls == [(c.id, c.function.arguments) for c in held]  # type: ignore[union-attr]
        assert mine[-1].finish_reason == whole.finish_reason
        logprobs = [t.token for c in mine for t in (c.logprobs and c.logprobs.content) or []]
        assert logprobs == _spelling(split[index], whole)  # each token's once
    assert read[-1].usage is not None and read[-1].usage.completion_tokens == 12


def test_a_required_answer_has_no_content_even_with_a_tag_in_its_arguments() -> None:
    body = _body(tool_choice="required")
    text = '[{"name":"get_time","parameters":{"zone":"<tool_call> UTC"}}]'
    whole = SdkCompletion.model_validate(completion(_result(body, text)))
    assert whole.choices[0].message.content is None and whole.choices[0].message.tool_calls


def test_text_completions_take_no_tools() -> None:
    catalog = Catalog.builtin()
    where: dict[str, Any] = {"tenant": "t", "lane": None, "catalog": catalog, "timeout_s": 60}
    text = {"prompt": "Once", "tools": TOOLS, "tool_choice": "required"}
    with pytest.raises(LlmqError, match="tool_choice, tools") as refused:
        read_text_call(text, **where)
    assert refused.value.code is ErrorCode.UNSUPPORTED
    # Responses: accepted with no tools to call in parallel.
    assert read_response_call({"input": "Hi", "parallel_tool_calls": False}, **where).store


def test_a_whole_answers_log_probabilities_are_its_texts_alone_as_in_its_stream() -> None:
    """The calls' tokens (their markup and arguments) came with a chat answer's logprobs,
    which Responses and OpenAI leave out."""
    body = _body(tool_choice="auto", logprobs=True)
    pieces = ("Sure", ". <tool", _hermes("ping", "{}", "")[len(" <tool") - 1 :])
    text = "".join(pieces)
    result = _result(body, text)
    assert result.response is not None
    [choice] = result.response.choices
    tokens = [TokenLogprob(token=t, logprob=-1.0) for t in pieces]
    logprobs = ChoiceLogprobs(content=tokens)
    answer = result.response.model_copy(
        update={"choices": [choice.model_copy(update={"logprobs": logprobs})]}
    )
    whole = completion(result.model_copy(update={"response": answer}))
    [out] = SdkCompletion.model_validate(whole).choices
    assert out.message.content == "Sure." and out.message.tool_calls
    assert out.logprobs is not None and out.logprobs.content is not None
    assert [t.token for t in out.logprobs.content] == ["Sure", ". <tool"]
    assert [t.token for t in out.logprobs.content] == _spelling(pieces, out)


CALL = _hermes("ping", "{}", "")


@pytest.mark.parametrize(
    "pieces",
    [
        [["Hi"], [" there.", " ", CALL]],
        [["Hi", " there", " "], ["ok", "\n", CALL]],  # space held back, its token sent
        [["Hi", " <"], ["b>", " ok", CALL]],  # a call's possible start, its token sent
    ],
)
def test_a_streamed_answer_of_calls_sends_its_texts_log_probabilities_as_the_whole_does(
    pieces: list[list[str]],
) -> None:
    """A piece holds several tokens, the last one's of text and of calls: all came with the
    calls chunk; then those past the text shown but not yet its own end."""
    body = _body(tool_choice="auto", logprobs=True)
    usage = Usage(prompt_tokens=9, completion_tokens=4, total_tokens=13)
    deltas, offset = [], 0
    for tokens in pieces:
        text, last = "".join(tokens), tokens is pieces[-1]
        logprobs = [TokenLogprob(token=t, logprob=-1.0) for t in tokens]
        reason = "stop" if last else None
        deltas.append(Delta(text, offset, reason, usage if last else None, logprobs=logprobs))
        offset += len(text)
    chunks = Chunks("c", 1, "m", include_usage=False, body=body)

    async def main() -> list[str]:
        return [e async for e in sse.events(chunks, deltas[0], _pieces(*deltas[1:]))]

    read = [ChatCompletionChunk.model_validate(json.loads(e[6:])) for e in asyncio.run(main())[:-1]]
    streamed = [c.choices[0].logprobs for c in read if c.choices[0].logprobs]
    sent = [t.token for lp in streamed for t in lp.content or []]
    every = [t for tokens in pieces for t in tokens]
    result = _result(body, "".join(every))
    assert result.response is not None
    [choice] = result.response.choices
    content = ChoiceLogprobs(content=[TokenLogprob(token=t, logprob=-1.0) for t in every])
    answer = result.response.model_copy(
        update={"choices": [choice.model_copy(update={"logprobs": content})]}
    )
    [whole] = SdkCompletion.model_validate(
        completion(result.model_copy(update={"response": answer}))
    ).choices
    assert whole.logprobs is not None and whole.logprobs.content is not None
    assert sent == [t.token for t in whole.logprobs.content]
    assert CALL not in sent and "\n" not in sent and sent[-1] != " "
