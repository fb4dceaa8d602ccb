"""The front door's reading of OpenAI request bodies and its OpenAI-shaped answers."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import ChatCompletion as ChatCompletionObject
from openai.types.chat import ChatCompletionChunk

from gateway.door import ApiError
from gateway.openai import (
    IGNORED,
    OPENAI_CODES,
    PASSED,
    READ_HERE,
    STATUS,
    Chunks,
    completion_of,
    error_body,
    read_call,
    retry_after,
)
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.fingerprint import fingerprint
from schemas.lanes import Lane
from schemas.request import CacheMode, ChatMessage, ChoiceOf, InferenceRequest
from schemas.result import (
    CacheStatus,
    ChatCompletion,
    Choice,
    ChoiceLogprobs,
    InferenceResult,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from schemas.tenants import TenantPolicy, key_hash, new_key

CATALOG = Catalog.builtin()
MESSAGES = [{"role": "user", "content": "Hi"}]


def _read(**body: Any) -> Any:
    data = {"model": "smollm2-135m", "messages": MESSAGES, **body}
    return read_call(data, tenant="acme", lane="interactive", catalog=CATALOG, timeout_s=60)


def _refused(code: ErrorCode, **body: Any) -> str:
    with pytest.raises(LlmqError) as caught:
        _read(**body)
    assert caught.value.code is code
    return caught.value.message


def test_a_body_becomes_a_request_of_the_keys_tenant_with_a_deadline() -> None:
    call = _read(max_tokens=8, temperature=0, stop="\n", stream=True, user="u1")
    request = call.request
    assert (request.tenant, request.model, request.lane) == (
        "acme",
        "smollm2-135m",
        Lane.INTERACTIVE,
    )
    assert (request.body.max_tokens, request.body.stop, request.body.stream) == (8, ["\n"], True)
    assert request.deadline is not None and 59 < request.deadline - request.created_at <= 60
    assert not call.include_usage
    assert len(request.correlation_id) == 32


def test_the_sdks_newer_fields_and_llmqs_extras_are_read() -> None:
    assert _read(logprobs=True, top_logprobs=3).request.body.top_logprobs == 3
    assert "top_logprobs" in _refused(ErrorCode.INVALID_REQUEST, top_logprobs=3)
    call = _read(max_completion_tokens=9, stream_options={"include_usage": True}, lane="batch", n=1)
    assert (call.request.body.max_tokens, call.request.lane, call.include_usage) == (
        9,
        Lane.BATCH,
        True,
    )
    assert _read(max_tokens=5, max_completion_tokens=7).request.body.max_tokens == 7
    content = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    call = _read(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": content},
        ]
    )
    assert [(m.role, m.content) for m in call.request.body.messages] == [
        ("system", "Be brief."),
        ("user", "Hello \nthere"),  # parts joined by line breaks, as vLLM joins them
    ]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": ["user"], "content": "hi"}], "messages[0].role"),  # a 500 before
        ([{"role": "user", "content": "a"}, {"role": {}, "content": "b"}], "messages[1].role"),
        (
            [{"role": "user", "content": [{"type": "text", "text": None}]}],
            "messages[0].content[0].text",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": 7}]}],
            "messages[0].content[0].text",
        ),
        ([{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
    ],
)
def test_a_role_or_text_part_of_the_wrong_type_is_named(messages: Any, param: str) -> None:
    """A text part's null was sent to the model as the word "None", its 7 as "7"."""
    with pytest.raises(LlmqError) as caught:
        _read(messages=messages)
    assert caught.value.param == param


def test_a_message_the_sdks_helpers_hand_back_can_be_sent_again() -> None:
    """The tool loop appends the answer's message: from `chat.completions.parse` its calls
    carry `parsed_arguments`, from `chat.completions.stream` an `index`; OpenAI and vLLM's
    server read past both."""
    function = {"name": "w", "arguments": '{"a": 1}', "parsed_arguments": {"a": 1}}
    call = {"id": "call_1", "type": "function", "function": function, "index": 0}
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    [_, answered, _] = _read(messages=messages).request.body.messages
    assert answered.tool_calls is not None
    assert [c.model_dump() for c in answered.tool_calls] == [
        {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"a": 1}'}}
    ]


def test_a_response_format_is_read_and_a_bad_one_named() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    body = _read(response_format=fmt).request.body
    assert body.json_format is not None and body.json_format.json_schema is not None
    assert body.json_format.json_schema.schema_ == schema
    bad = {"type": "json_schema"}
    assert "response_format" in _refused(ErrorCode.INVALID_REQUEST, response_format=bad)


def test_what_llmq_does_not_serve_is_refused_by_name() -> None:
    tool = {"type": "function", "function": {"name": "f"}}
    assert _read(tools=[tool]).request.body.tool_choice == "auto"  # OpenAI's default
    # "auto" needs every model that may serve the request to read calls from its text.
    reads = {"engine": "vllm", "source": "/m", "tool_call_parser": "hermes"}
    catalog = Catalog.model_validate(
        {"default": "a", "models": [{"name": "a", **reads}, {"name": "b", "source": "/m"}]}
    )
    only_b = Catalog.model_validate({"default": "b", "models": [{"name": "b", "source": "/m"}]})
    for model, served in (("b", catalog), ("auto", only_b)):
        data = {"model": model, "messages": MESSAGES, "tools": [tool]}
        with pytest.raises(LlmqError) as caught:
            read_call(data, tenant="t", lane=None, catalog=served, timeout_s=60)
        assert caught.value.code is ErrorCode.UNSUPPORTED
        assert "by 'b': its catalog entry names no tool_call_parser" in caught.value.message
    # Model "auto" routes among the models that read calls, where any does.
    data = {"model": "auto", "messages": MESSAGES, "tools": [tool]}
    assert read_call(data, tenant="t", lane=None, catalog=catalog, timeout_s=60).request.body
    data = {"model": "a", "messages": MESSAGES, "tools": [tool], "tool_choice": "auto"}
    read = read_call(data, tenant="t", lane=None, catalog=catalog, timeout_s=60).request.body
    assert read.tool_choice == "auto"
    falls = {"name": "a", **reads, "fallback": ["b"]}  # the router leaves out b, reading none
    catalog = Catalog.model_validate(
        {"default": "a", "models": [falls, {"name": "b", "source": "/m"}]}
    )
    assert read_call(data, tenant="t", lane=None, catalog=catalog, timeout_s=60).request.body
    with pytest.raises(LlmqError, match="by 'b'"):
        read_call({**data, "model": "b"}, tenant="t", lane=None, catalog=catalog, timeout_s=60)
    assert "tools.0.function" in _refused(
        ErrorCode.INVALID_REQUEST, tools=[{"type": "function"}], tool_choice="required"
    )
    assert "tools" in _read(tools=[tool], tool_choice="none").request.body.model_dump()
    for n in (0, 17, 1.5, True, "2"):
        assert "from 1 to 16" in _refused(ErrorCode.INVALID_REQUEST, n=n)
    function = [{"role": "function", "name": "f", "content": "x"}]  # OpenAI's old tool role
    assert "'function'" in _refused(ErrorCode.UNSUPPORTED, messages=function)
    image = [{"type": "image_url", "image_url": {"url": "x"}}]
    assert "text" in _refused(ErrorCode.UNSUPPORTED, messages=[{"role": "user", "content": image}])
    assert "'gpt-4o'" in _refused(ErrorCode.UNKNOWN_MODEL, model="gpt-4o")
    assert "max_tokens" in _refused(ErrorCode.INVALID_REQUEST, max_tokens=0)
    assert "'fast'" in _refused(ErrorCode.INVALID_REQUEST, lane="fast")


def test_n_choices_are_requests_of_their_own_seeded_apart() -> None:
    call = _read(n=3, seed=7, temperature=0.8)
    copies = call.requests
    cid = call.request.correlation_id
    assert [r.correlation_id for r in copies] == [cid, f"{cid}-1", f"{cid}-2"]
    assert [r.body.seed for r in copies] == [7, 8, 9]
    unseeded = [r.body.model_copy(update={"seed": None}) for r in copies]
    assert unseeded == [call.request.body.model_copy(update={"seed": None})] * 3
    greedy = _read(n=2, temperature=0).requests
    assert [r.body.seed for r in greedy] == [None, None]
    assert [r.cache for r in greedy] == [CacheMode.AUTO] * 2  # one answer: they coalesce
    seeded = _read(n=3, temperature=0, seed=42).requests  # "reproducible": still one answer
    assert [r.body.seed for r in seeded] == [42] * 3
    assert len({fingerprint(r, "m") for r in seeded}) == 1
    sampled = _read(n=3, temperature=0.7, cache="always").requests
    assert [r.cache for r in sampled] == [CacheMode.ALWAYS, CacheMode.OFF, CacheMode.OFF]
    assert call.requests is copies  # made once per call
    one = _read()
    assert one.requests == [one.request]


def test_each_choice_names_its_call_for_admission_together() -> None:
    """The rate limits charge a call's choices once, or refuse them together, by its id and
    its n, which travel in each choice's record; a lone request's record is as it was."""
    call = _read(n=3, temperature=0.8)
    cid = call.request.correlation_id
    assert {r.choice_of for r in call.requests} == {ChoiceOf(call_id=cid, n=3)}
    read = [InferenceRequest.model_validate_json(r.record()) for r in call.requests]
    assert [r.choice_of for r in read] == [ChoiceOf(call_id=cid, n=3)] * 3
    one = _read()
    assert one.request.choice_of is None and b"choice_of" not in one.request.record()


def test_n_answers_are_one_completion_with_their_usage_summed() -> None:
    def result(cid: str, text: str, cache: CacheStatus) -> InferenceResult:
        answer = ChatMessage(role="assistant", content=text)
        response = ChatCompletion(
            id="x",
            created=1,
            model="m",
            choices=[Choice(message=answer, finish_reason="stop")],
            usage=Usage(prompt_tokens=5, completion_tokens=len(text), total_tokens=5 + len(text)),
        )
        return InferenceResult(
            correlation_id=cid, tenant="t", status="ok", response=response, cache=cache
        )

    body = completion_of(
        [result("c", "Hi", CacheStatus.NONE), result("c-1", "Hey", CacheStatus.COALESCED)]
    )
    read = ChatCompletionObject.model_validate(body)
    assert [(c.index, c.message.content) for c in read.choices] == [(0, "Hi"), (1, "Hey")]
    assert read.usage is not None
    assert (read.usage.prompt_tokens, read.usage.completion_tokens, read.usage.total_tokens) == (
        5,
        5,
        10,
    )
    assert read.id == "chatcmpl-c"
    assert body["llmq"]["choices"] == [
        {"correlation_id": "c", "cache": "none"},
        {"correlation_id": "c-1", "cache": "coalesced"},
    ]


def test_a_null_field_is_one_not_given() -> None:
    """OpenAI's optional fields are nullable, and clients send nulls for what they leave
    unset (the SDK does for an explicit None): tools too, when there are none."""
    served = (PASSED | READ_HERE | set(IGNORED)) - {"messages"}
    nullable = served | {"tools", "tool_choice", "functions", "audio", "prediction", "verbosity"}
    call = _read(**dict.fromkeys(nullable))
    assert call.request.body == _read().request.body and call.n == 1
    assert _read(tools=[], tool_choice="auto").request.body == _read().request.body


def test_fields_of_openais_own_services_are_accepted_and_ignored() -> None:
    plain = _read().request
    call = _read(
        user="u-1",
        safety_identifier="hash",
        prompt_cache_key="support-bot",
        store=True,
        metadata={"team": "search"},
        parallel_tool_calls=False,
        modalities=None,
        service_tier=None,
    )
    assert call.request.body == plain.body and call.request.lane == plain.lane
    assert "store must be a bool" in _refused(ErrorCode.INVALID_REQUEST, store="yes")
    assert "metadata" in _refused(ErrorCode.INVALID_REQUEST, metadata={"n": 1})
    assert "text only" in _refused(ErrorCode.UNSUPPORTED, modalities=["text", "audio"])


def test_a_service_tier_picks_the_lane_unless_one_is_named() -> None:
    def lane(header: str | None = None, **body: Any) -> Lane:
        data = {"model": "smollm2-135m", "messages": MESSAGES, **body}
        call = read_call(
            data, tenant="a", lane=header, default_lane="standard", catalog=CATALOG, timeout_s=60
        )
        return call.request.lane

    assert lane() == lane(service_tier="auto") == lane(service_tier="default") == Lane.STANDARD
    assert lane(service_tier="flex") == Lane.BATCH
    assert lane(service_tier="priority") == lane(service_tier="fast") == Lane.INTERACTIVE
    assert lane(service_tier="scale") == Lane.STANDARD
    assert lane("standard", service_tier="flex") == Lane.STANDARD  # the header's
    assert lane("standard", service_tier="flex", lane="interactive") == Lane.INTERACTIVE
    assert "service_tier" in _refused(ErrorCode.INVALID_REQUEST, service_tier="turbo")


def test_auto_and_no_model_are_served() -> None:
    assert _read(model="auto").request.model == "auto"
    assert _read(model=None).request.model == CATALOG.default


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.INVALID_REQUEST, 400),
        (ErrorCode.PROMPT_TOO_LARGE, 400),
        (ErrorCode.ANSWER_TOO_LARGE, 400),
        (ErrorCode.UNKNOWN_MODEL, 404),
        (ErrorCode.EXPIRED, 408),
        (ErrorCode.RATE_LIMITED, 429),
        (ErrorCode.BUDGET_EXCEEDED, 429),
        (ErrorCode.INTERNAL_ERROR, 500),
        (ErrorCode.ENGINE_ERROR, 502),
        (ErrorCode.ENGINE_UNAVAILABLE, 503),
        (ErrorCode.ENGINE_TIMEOUT, 504),
        (ErrorCode.CRASH_LOOP, 500),
    ],
)
def test_each_error_has_the_status_the_sdk_maps(code: ErrorCode, status: int) -> None:
    got, body = error_body(code, "why")
    assert got == status
    assert body["error"]["message"] == "why"
    assert body["error"]["code"] == OPENAI_CODES.get(code, code.value)


def test_a_conflict_is_a_request_error_as_openais() -> None:
    """The Batch API's 409s (a file a batch still reads, a batch that cannot be cancelled)
    are the caller's, as OpenAI types them, not a server_error."""
    conflict = ApiError(LlmqError(ErrorCode.INVALID_REQUEST, "busy"), 409)
    assert (conflict.status, conflict.body["error"]["type"]) == (409, "invalid_request_error")


def test_every_code_a_reply_carries_has_a_status() -> None:
    replied = set(ErrorCode) - {ErrorCode.SUPERSEDED}  # a worker's outcome, never a reply
    assert replied <= set(STATUS), sorted(replied - set(STATUS))


def test_an_error_that_retrying_cannot_mend_tells_the_sdk_not_to() -> None:
    assert ApiError(LlmqError(ErrorCode.CRASH_LOOP, "x")).headers == {"x-should-retry": "false"}
    assert ApiError(LlmqError(ErrorCode.ENGINE_ERROR, "x")).headers == {}
    # A 408: the SDK retried an expired request twice, each waiting out its timeout again.
    expired = ApiError(LlmqError(ErrorCode.EXPIRED, "x"))
    assert (expired.status, expired.headers) == (408, {"x-should-retry": "false"})
    # Requests in flight hold the rest of the budget: retried after its Retry-After.
    held = ApiError(LlmqError(ErrorCode.BUDGET_EXCEEDED, "x", retry_after_s=5))
    assert (held.status, held.headers) == (429, {"Retry-After": "5"})
    assert ApiError(LlmqError(ErrorCode.ANSWER_TOO_LARGE, "x")).status == 400


def test_a_429_says_when_to_retry_in_whole_seconds() -> None:
    assert retry_after(LlmqError(ErrorCode.RATE_LIMITED, "x", retry_after_s=0.2)) == {
        "Retry-After": "1"
    }
    assert retry_after(LlmqError(ErrorCode.BUDGET_EXCEEDED, "x", retry_after_s=90.5)) == {
        "Retry-After": "91"
    }


def test_chunks_are_shaped_as_openais() -> None:
    chunks = Chunks("c1", 7, "m", include_usage=True)
    first = chunks.role()
    assert first is not None
    assert first["object"] == "chat.completion.chunk" and first["id"] == "chatcmpl-c1"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["usage"] is None
    assert chunks.content("Hi")["choices"][0]["delta"] == {"content": "Hi"}
    assert chunks.finish("stop")["choices"][0]["finish_reason"] == "stop"
    usage = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    last = chunks.usage(usage)
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 3
    assert "usage" not in (Chunks("c1", 7, "m", include_usage=False).role() or {"usage": 0})


def test_a_chunks_logprobs_read_as_the_sdks() -> None:
    entry = TokenLogprob(
        token="Hi", logprob=-0.5, top_logprobs=[TopLogprob(token="Hi", logprob=-0.5)]
    )
    chunks = Chunks("c1", 7, "m", include_usage=False)
    read = ChatCompletionChunk.model_validate(chunks.content("Hi", [entry]))
    logprobs = read.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [(t.token, t.logprob, t.top_logprobs[0].token) for t in logprobs.content] == [
        ("Hi", -0.5, "Hi")
    ]
    assert logprobs.content[0].bytes == logprobs.content[0].top_logprobs[0].bytes == [72, 105]
    assert ChatCompletionChunk.model_validate(chunks.content("Hi")).choices[0].logprobs is None


def test_logprobs_carry_each_tokens_utf8_bytes_as_vllms_server_does() -> None:
    summer = "\u00e9t\u00e9"
    top = [TopLogprob(token=summer, logprob=-0.1), TopLogprob(token="\ufffd", logprob=-3)]
    entry = TokenLogprob(token=summer, logprob=-0.1, top_logprobs=top)
    choice = Choice(
        message=ChatMessage(role="assistant", content=summer),
        finish_reason="length",
        logprobs=ChoiceLogprobs(content=[entry]),
    )
    usage = Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)
    response = ChatCompletion(id="x", created=1, model="m", choices=[choice], usage=usage)
    result = InferenceResult(correlation_id="c", tenant="t", status="ok", response=response)
    read = ChatCompletionObject.model_validate(completion_of([result])).choices[0].logprobs
    assert read is not None and read.content is not None
    [token] = read.content
    assert token.bytes == [0xC3, 0xA9, 0x74, 0xC3, 0xA9]
    assert bytes(token.bytes).decode() == token.token
    assert [t.bytes for t in token.top_logprobs] == [token.bytes, [0xEF, 0xBF, 0xBD]]


def test_api_keys_are_kept_hashed_and_name_their_tenant() -> None:
    key = new_key()
    policy = TenantPolicy.model_validate({"api_keys": {key_hash(key): "acme"}})
    assert policy.tenant_of(key) == "acme"
    assert policy.tenant_of(key + "x") is None
    assert key not in policy.model_dump_json()
    with pytest.raises(ValueError, match="api_keys"):
        TenantPolicy.model_validate({"api_keys": {key: "acme"}})  # a key, not its hash


def test_the_front_door_refuses_to_serve_anyone_beyond_loopback_without_keys() -> None:
    assert GatewaySettings(api_host="127.0.0.1").policy().api_keys == {}
    with pytest.raises(ValueError, match="no API keys"):
        GatewaySettings(api_host="0.0.0.0").policy()


def test_vllms_sampling_extensions_pass_as_vllms_server_takes_them() -> None:
    body = _read(top_k=5, min_p=0.1, repetition_penalty=1.2, min_tokens=3).request.body
    assert body.vllm_sampling == {
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.2,
        "min_tokens": 3,
    }
    assert "min_tokens" in _refused(ErrorCode.INVALID_REQUEST, max_tokens=2, min_tokens=3)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 5}, "temperature"),
        (
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": 5}]},
            "messages[1].content",
        ),
        ({"model": "nope"}, "model"),
        ({"n": 0}, "n"),
        ({"top_logprobs": 99, "logprobs": True}, "top_logprobs"),
        ({"metadata": {"a": 1}}, "metadata"),
        ({"service_tier": "gold"}, "service_tier"),
        ({"stop": 5}, "stop"),
    ],
)
def test_a_refusal_names_the_field_at_fault_as_openai_does(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(LlmqError) as caught:
        _read(**body)
    assert ApiError(caught.value).body["error"]["param"] == param


def test_a_refusal_of_the_whole_body_names_no_field() -> None:
    with pytest.raises(LlmqError) as caught:
        _read(frobnicate=1)
    assert ApiError(caught.value).body["error"]["param"] is None
