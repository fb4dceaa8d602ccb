"""The request contract: InferenceRequest and ChatBody validation, caching policy, deadlines."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.names import RESULTS
from schemas.request import (
    MAX_CONTENT_CHARS,
    MAX_LOGIT_BIAS,
    MAX_MESSAGES,
    MAX_RECORD_BYTES,
    MAX_SCHEMA_CHARS,
    NAMES,
    CacheMode,
    ChatBody,
    InferenceRequest,
)


def _body(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "Hello"}], **fields}


def _request(body: dict[str, Any] | None = None, **fields: Any) -> InferenceRequest:
    data = {"correlation_id": "req-1", "body": _body() if body is None else body, **fields}
    return InferenceRequest.model_validate(data)


def test_minimal_request_gets_the_documented_defaults() -> None:
    request = _request()
    assert request.schema_version == 1
    assert request.tenant == "default"
    assert request.model is None
    assert request.lane is Lane.STANDARD
    assert request.reply_to == RESULTS
    assert request.cache is CacheMode.AUTO
    assert request.deadline is None
    assert request.created_at > 0
    assert request.body.max_tokens == 256
    assert request.body.temperature == 1.0
    assert request.body.stop is None
    assert request.body.stream is False


@pytest.mark.parametrize(
    "data",
    [
        {"correlation_id": "c", "body": _body(), "priority": "high"},
        {"correlation_id": "c", "body": _body(functions=[])},
        {"correlation_id": "c", "body": {"messages": [{"role": "user", "content": "x", "n": 1}]}},
    ],
    ids=["envelope", "body", "message"],
)
def test_extra_fields_are_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        InferenceRequest.model_validate(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", 32_769),
        ("temperature", -0.01),
        ("temperature", 2.01),
        ("top_p", -0.01),
        ("top_p", 1.01),
        ("seed", -(2**63) - 1),
        ("seed", 2**63),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -2.5),
        ("top_k", -2),
        ("top_k", 2**31),
        ("min_p", -0.1),
        ("min_p", 1.01),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", 10.01),
        ("min_tokens", -1),
    ],
)
def test_sampling_parameters_out_of_bounds_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        ChatBody.model_validate(_body(**{field: value}))


def test_any_64_bit_seed_is_taken_and_minus_one_is_none_as_vllm_reads_it() -> None:
    assert ChatBody.model_validate(_body(seed=-(2**63))).seed == -(2**63)
    for minus_one in (-1, "-1", -1.0):
        unseeded = ChatBody.model_validate(_body(seed=minus_one, temperature=0.7))
        assert unseeded.seed is None
        assert not unseeded.deterministic, "a sample of its own: not cached, not coalesced"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 1),
        ("max_tokens", 32_768),
        ("temperature", 0.0),
        ("temperature", 2.0),
        ("top_p", 1.0),
        ("seed", 0),
        ("seed", 2**63 - 1),
        ("top_k", -1),
        ("top_k", 1),
        ("min_p", 0.0),
        ("min_p", 1.0),
        ("repetition_penalty", 10.0),
        ("min_tokens", 256),
    ],
)
def test_sampling_parameters_at_their_bounds_are_accepted(field: str, value: float) -> None:
    body = ChatBody.model_validate(_body(**{field: value}))
    assert getattr(body, field) == value


def test_stop_as_one_string_becomes_a_list() -> None:
    assert ChatBody.model_validate(_body(stop="END")).stop == ["END"]
    assert ChatBody.model_validate(_body(stop=["a", "b"])).stop == ["a", "b"]


@pytest.mark.parametrize("stop", [["a", "b", "c", "d", "e"], "", ["x" * 257]])
def test_bad_stop_sequences_are_rejected(stop: str | list[str]) -> None:
    with pytest.raises(ValidationError, match="stop"):
        ChatBody.model_validate(_body(stop=stop))


def test_message_count_is_bounded() -> None:
    message = {"role": "user", "content": "x"}
    assert len(ChatBody.model_validate({"messages": [message] * MAX_MESSAGES}).messages) == 256
    with pytest.raises(ValidationError, match="messages"):
        ChatBody.model_validate({"messages": [message] * (MAX_MESSAGES + 1)})
    with pytest.raises(ValidationError, match="messages"):
        ChatBody.model_validate({"messages": []})


def test_message_content_and_role_are_checked() -> None:
    with pytest.raises(ValidationError, match="content"):
        ChatBody.model_validate(
            {"messages": [{"role": "user", "content": "x" * (MAX_CONTENT_CHARS + 1)}]}
        )
    with pytest.raises(ValidationError, match="role"):
        ChatBody.model_validate({"messages": [{"role": "function", "content": "x"}]})


@pytest.mark.parametrize(
    "bad",
    ["", "has space", "new\nline", "trailing\n", "a" * 129, "émoji", "semi;colon", "a/b"],
)
def test_bad_correlation_ids_and_tenants_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError, match="correlation_id"):
        _request(correlation_id=bad)
    with pytest.raises(ValidationError, match="tenant"):
        _request(tenant=bad)


@pytest.mark.parametrize("good", ["a", "a" * 128, "Req_1.2:3-x", "0"])
def test_good_identifiers_are_accepted(good: str) -> None:
    request = _request(correlation_id=good, tenant=good)
    assert (request.correlation_id, request.tenant) == (good, good)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reply_to", "bad topic"),
        ("reply_to", ""),
        ("model", "-starts-with-dash"),
        ("model", "m" * 65),
        ("lane", "urgent"),
        ("cache", "sometimes"),
        ("schema_version", 2),
        ("deadline", 0),
        ("created_at", -1.0),
    ],
)
def test_bad_envelope_fields_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        _request(**{field: value})


def test_envelope_and_body_model_must_agree() -> None:
    with pytest.raises(ValidationError, match="differ"):
        _request(model="a", body=_body(model="b"))
    assert _request(model="a", body=_body(model="a")).requested_model == "a"
    assert _request(body=_body(model="b")).requested_model == "b"
    assert _request(model="a").requested_model == "a"
    assert _request().requested_model is None


@pytest.mark.parametrize(
    ("cache", "sampling", "cacheable"),
    [
        (CacheMode.AUTO, {"temperature": 0.0}, True),
        (CacheMode.AUTO, {"temperature": 0.7, "seed": 42}, True),
        (CacheMode.AUTO, {"temperature": 0.7}, False),
        (CacheMode.ALWAYS, {"temperature": 0.7}, True),
        (CacheMode.ALWAYS, {"temperature": 0.0}, True),
        (CacheMode.OFF, {"temperature": 0.0}, False),
        (CacheMode.OFF, {"temperature": 0.0, "seed": 1}, False),
        (CacheMode.OFF, {"temperature": 0.7}, False),
    ],
)
def test_cacheable_follows_the_cache_mode_and_determinism(
    cache: CacheMode, sampling: dict[str, float], cacheable: bool
) -> None:
    assert _request(body=_body(**sampling), cache=cache).cacheable is cacheable


def test_deterministic_means_greedy_or_seeded() -> None:
    assert ChatBody.model_validate(_body(temperature=0)).deterministic
    assert ChatBody.model_validate(_body(seed=0)).deterministic
    assert not ChatBody.model_validate(_body(temperature=0.1)).deterministic


def test_top_p_zero_is_greedy_decoding_as_openai_takes_it() -> None:
    """OpenAI takes top_p 0 (the likeliest token only), which vLLM refuses: it is the greedy
    request, deterministic and cached as one, whatever temperature came with it."""
    greedy = ChatBody.model_validate(_body(temperature=0))
    for zero in (0, 0.0):
        body = ChatBody.model_validate(_body(top_p=zero, temperature=0.8))
        assert body == greedy and body.deterministic
        assert (body.top_p, body.temperature) == (1.0, 0.0)  # what either engine takes
    assert _request(body=_body(top_p=0)).cacheable
    for not_a_number in (False, "0"):
        with pytest.raises(ValidationError, match="top_p"):
            ChatBody.model_validate(_body(top_p=not_a_number))


def test_a_field_checked_against_another_is_refused_at_its_place() -> None:
    """Refusals of a field that another makes wrong name that field, in words without
    pydantic's "Value error," (an OpenAI error's param is read from the location)."""
    named = {"type": "function", "function": {"name": "nope"}}
    tools = [{"type": "function", "function": {"name": "ping", "parameters": {}}}]
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"top_logprobs": 2}, "top_logprobs", "needs logprobs: true"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools to choose from"),
        ({"tools": tools, "tool_choice": named}, "tool_choice", "'nope', which is not one"),
        (
            {"tools": tools, "tool_choice": "required", "response_format": {"type": "json_object"}},
            "tool_choice",
            "no response_format with them",
        ),
        (
            {"max_tokens": 8, "min_tokens": 9},
            "min_tokens",
            "min_tokens (9) is more than max_tokens",
        ),
    ]
    for fields, field, why in cases:
        with pytest.raises(ValidationError) as caught:
            ChatBody.model_validate(_body(**fields))
        [error] = caught.value.errors()
        assert error["loc"] == (field,) and why in error["msg"], fields
        assert not error["msg"].startswith("Value error"), fields


def test_a_refusal_names_a_field_as_its_sender_does() -> None:
    """The validation context's NAMES: the OpenAI door's max_completion_tokens."""
    names = {NAMES: {"max_tokens": "max_completion_tokens", "response_format": "text.format"}}
    with pytest.raises(ValidationError, match=r"is more than max_completion_tokens \(8\)"):
        ChatBody.model_validate(_body(max_tokens=8, min_tokens=9), context=names)
    tools = [{"type": "function", "function": {"name": "ping", "parameters": {}}}]
    as_json = {"type": "json_object"}
    body = _body(tools=tools, tool_choice="required", response_format=as_json)
    with pytest.raises(ValidationError, match=r"no text\.format with them"):
        ChatBody.model_validate(body, context=names)


def test_expired_compares_the_deadline_with_now() -> None:
    assert not _request().expired(now=1e12)
    request = _request(deadline=1_000.0)
    assert request.expired(now=1_000.5)
    assert not request.expired(now=999.0)
    assert not request.expired(now=1_000.0)
    assert request.expired()  # the real clock is long past 1970


def test_expired_honours_an_explicit_now_of_zero() -> None:
    # `now=0.0` is a time like any other; it must not fall back to the real clock.
    assert not _request(deadline=1.0).expired(now=0.0)


def test_prompt_chars_counts_every_message() -> None:
    body = ChatBody.model_validate(
        {"messages": [{"role": "system", "content": "abc"}, {"role": "user", "content": "de"}]}
    )
    assert body.prompt_chars() == 5


def test_json_round_trip_preserves_the_request() -> None:
    request = _request(
        tenant="acme",
        model="smollm2-135m",
        lane="interactive",
        reply_to="app.replies",
        deadline=2e9,
        cache="always",
        body=_body(stop="\n\n", seed=7, temperature=0.2, logprobs=True, max_tokens=32),
    )
    again = InferenceRequest.model_validate_json(request.model_dump_json())
    assert again == request
    assert again.body.stop == ["\n\n"]
    assert again.lane is Lane.INTERACTIVE


def test_the_record_is_the_request_without_its_unset_fields() -> None:
    request = _request(tenant="acme")
    assert request.record() == request.model_dump_json(exclude_none=True).encode()
    assert InferenceRequest.model_validate_json(request.record()) == request


def test_a_record_past_the_limit_is_refused_naming_both_sizes() -> None:
    """Within the prompt's character bound, yet past the record's bytes: 4 bytes a character."""
    emoji = "\N{GRINNING FACE}" * (MAX_RECORD_BYTES // 4)
    request = _request(body=_body(messages=[{"role": "user", "content": emoji}]))
    with pytest.raises(LlmqError) as refused:
        request.record()
    assert refused.value.code is ErrorCode.PROMPT_TOO_LARGE
    size = len(request.model_dump_json(exclude_none=True).encode())
    assert refused.value.message == f"record is {size} bytes; the limit is {MAX_RECORD_BYTES}"


def test_requests_are_frozen() -> None:
    request = _request()
    with pytest.raises(ValidationError, match="frozen"):
        request.tenant = "other"  # type: ignore[misc]


SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}}


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema"},
        {"type": "json_object", "json_schema": {"name": "a", "schema": SCHEMA}},
        {"type": "xml"},
        {"type": "json_schema", "json_schema": {"name": "has space", "schema": SCHEMA}},
        {"type": "json_schema", "json_schema": {"name": "a"}},
        {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "extra": 1}},
        {"type": "json_schema", "json_schema": {"name": "a", "schema": [1]}},
        {
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": {"x": "y" * MAX_SCHEMA_CHARS}},
        },
    ],
)
def test_bad_response_formats_are_rejected(response_format: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="response_format"):
        ChatBody.model_validate(_body(response_format=response_format))


def test_a_json_schema_keeps_its_wire_name_and_order_through_a_round_trip() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}}
    body = ChatBody.model_validate(_body(response_format=fmt))
    assert body.json_format is not None and body.json_format.json_schema is not None
    assert body.json_format.json_schema.schema_ == SCHEMA
    wire = body.model_dump_json(exclude_none=True)
    assert '"json_schema":{"name":"a","schema":{"type":"object","properties"' in wire
    assert ChatBody.model_validate_json(wire) == body


def test_plain_text_is_no_json_format() -> None:
    assert ChatBody.model_validate(_body(response_format={"type": "text"})).json_format is None
    assert ChatBody.model_validate(_body()).json_format is None
    fmt = ChatBody.model_validate(_body(response_format={"type": "json_object"})).json_format
    assert fmt is not None and fmt.json_schema is None


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"top_logprobs": 2}, "needs logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "less than or equal to 20"),
        ({"logprobs": True, "top_logprobs": -1}, "greater than or equal to 0"),
    ],
)
def test_top_logprobs_come_with_logprobs_within_openais_bound(
    fields: dict[str, Any], why: str
) -> None:
    with pytest.raises(ValidationError, match=why):
        ChatBody.model_validate(_body(**fields))
    assert ChatBody.model_validate(_body(logprobs=True, top_logprobs=20)).top_logprobs == 20


def test_logit_bias_maps_token_ids_to_bounded_biases() -> None:
    body = ChatBody.model_validate_json(json.dumps(_body(logit_bias={"50256": -100, "7": 2.5})))
    assert body.logit_bias == {50256: -100.0, 7: 2.5}
    assert ChatBody.model_validate_json(body.model_dump_json()) == body  # keys as strings


@pytest.mark.parametrize(
    ("bias", "why"),
    [
        ({"the": 1}, "valid integer"),
        ({"-1": 1}, "greater than or equal to 0"),
        ({"5": 101}, "less than or equal to 100"),
        ({"5": float("nan")}, "finite number"),
        ({str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}, f"at most {MAX_LOGIT_BIAS}"),
    ],
)
def test_a_bad_logit_bias_is_refused_saying_why(bias: dict[str, float], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        ChatBody.model_validate(_body(logit_bias=bias))


def test_fields_left_at_none_stay_out_of_the_record() -> None:
    """An older reader refuses fields it does not know: a body that uses none of the newer
    optional fields must not name them (a rolling upgrade)."""
    plain = ChatBody.model_validate(_body())
    assert set(json.loads(plain.model_dump_json())) == {
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "ignore_eos",
        "stream",
    }
    used = ChatBody.model_validate(_body(seed=3, logit_bias={"5": 1}))
    assert ChatBody.model_validate_json(used.model_dump_json()) == used
    assert json.loads(used.model_dump_json())["logit_bias"] == {"5": 1.0}


def test_vllms_sampling_extensions_count_only_when_they_change_the_sampling() -> None:
    neutral = _body(top_k=0, min_p=0.0, repetition_penalty=1.0, min_tokens=0)
    assert ChatBody.model_validate(neutral).vllm_sampling == {}
    assert ChatBody.model_validate(_body(top_k=-1)).vllm_sampling == {}
    used = ChatBody.model_validate(_body(top_k=5, min_p=0.1, repetition_penalty=1.2, min_tokens=3))
    assert used.vllm_sampling == {
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.2,
        "min_tokens": 3,
    }
    assert ChatBody.model_validate_json(used.model_dump_json()) == used


def test_min_tokens_may_not_pass_max_tokens() -> None:
    with pytest.raises(ValidationError, match=r"min_tokens \(9\) is more than max_tokens \(8\)"):
        ChatBody.model_validate(_body(max_tokens=8, min_tokens=9))
    assert ChatBody.model_validate(_body(max_tokens=8, min_tokens=8)).min_tokens == 8


def test_a_raw_prompt_is_one_user_message() -> None:
    raw = ChatBody.model_validate(_body(raw_prompt=True))
    assert raw.raw_prompt is True and ChatBody.model_validate_json(raw.model_dump_json()) == raw
    two = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    for messages in (two, [{"role": "system", "content": "a"}]):
        with pytest.raises(ValidationError, match="a raw prompt is one user message"):
            ChatBody.model_validate({"messages": messages, "raw_prompt": True})
    with pytest.raises(ValidationError, match="raw_prompt"):
        ChatBody.model_validate(_body(raw_prompt=False))  # True, or left out of the record
    empty = {"messages": [{"role": "user", "content": ""}], "raw_prompt": True}
    with pytest.raises(ValidationError, match="a raw prompt must not be empty"):
        ChatBody.model_validate(empty)
