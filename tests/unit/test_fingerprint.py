"""The fingerprint: equal for requests with the same output, different otherwise."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from schemas.fingerprint import fingerprint
from schemas.request import InferenceRequest

MODEL = "smollm2-135m"


def _data(**body: Any) -> dict[str, Any]:
    return {
        "correlation_id": "c-1",
        "tenant": "acme",
        "body": {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Héllo"},
            ],
            "max_tokens": 32,
            "temperature": 0,
            "stop": "END",
            "seed": 7,
            **body,
        },
    }


def _fp(data: dict[str, Any], model: str = MODEL) -> str:
    return fingerprint(InferenceRequest.model_validate(data), model)


BASE = _fp(_data())


def test_known_digest_pins_the_canonical_form() -> None:
    # Changing the canonical form invalidates every cache entry: bump FINGERPRINT_VERSION then.
    canonical = (
        '{"frequency_penalty":0.0,"logprobs":false,"max_tokens":32,'
        '"messages":[["system","Be brief."],["user","Héllo"]],"model":"smollm2-135m",'
        '"presence_penalty":0.0,"seed":7,"stop":["END"],"temperature":0.0,"tenant":"acme",'
        '"top_p":1.0,"v":1}'
    )
    assert hashlib.sha256(canonical.encode()).hexdigest() == BASE
    assert BASE == "4efb3dd8a5ec2ae20b6e2c45fc18dfe7716d57c5e13d12cb92224763b0cfc923"


def test_top_p_zero_is_the_greedy_request() -> None:
    """OpenAI's top_p 0, served as greedy, shares the greedy request's answer."""
    assert _fp(_data(top_p=0, temperature=0.9)) == BASE


@pytest.mark.parametrize(
    "envelope",
    [
        {"correlation_id": "another-id"},
        {"lane": "batch"},
        {"lane": "interactive"},
        {"reply_to": "app.replies"},
        {"created_at": 1.0},
        {"deadline": 4e9},
        {"cache": "always"},
        {"cache": "off"},
        {"model": MODEL},
    ],
)
def test_envelope_fields_that_do_not_change_the_output_are_ignored(
    envelope: dict[str, Any],
) -> None:
    assert _fp({**_data(), **envelope}) == BASE


def test_body_model_and_stop_spelling_do_not_matter() -> None:
    assert _fp(_data(model=MODEL)) == BASE
    assert _fp(_data(stop=["END"])) == BASE
    assert _fp(_data(stop=None)) == _fp(_data(stop=[]))


def test_tenant_and_model_change_it() -> None:
    assert _fp({**_data(), "tenant": "other"}) != BASE
    assert _fp(_data(), model="other-model") != BASE


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        [{"role": "system", "content": "Be brief!"}, {"role": "user", "content": "Héllo"}],
        [{"role": "user", "content": "Be brief."}, {"role": "user", "content": "Héllo"}],
        [{"role": "user", "content": "Héllo"}, {"role": "system", "content": "Be brief."}],
        [{"role": "user", "content": "Héllo"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Héllo"},
            {"role": "assistant", "content": ""},
        ],
    ],
    ids=["content", "system-content", "role", "order", "dropped", "added"],
)
def test_any_message_change_changes_it(messages: list[dict[str, str]]) -> None:
    assert _fp(_data(messages=messages)) != BASE


def test_message_boundaries_are_part_of_it() -> None:
    split_one = [{"role": "user", "content": "ab"}, {"role": "user", "content": "c"}]
    split_two = [{"role": "user", "content": "a"}, {"role": "user", "content": "bc"}]
    assert _fp(_data(messages=split_one)) != _fp(_data(messages=split_two))


@pytest.mark.parametrize(
    "sampling",
    [
        {"max_tokens": 33},
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"stop": "STOP"},
        {"stop": ["END", "STOP"]},
        {"seed": 8},
        {"seed": None},
        {"presence_penalty": 0.1},
        {"frequency_penalty": 0.1},
        {"logprobs": True},
        {"logprobs": True, "top_logprobs": 0},
        {"ignore_eos": True},
        {"logit_bias": {"5": 1}},
        {"top_k": 5},
        {"min_p": 0.05},
        {"repetition_penalty": 1.1},
        {"min_tokens": 2},
        {"raw_prompt": True, "messages": [{"role": "user", "content": "Héllo"}]},
    ],
)
def test_any_sampling_parameter_changes_it(sampling: dict[str, Any]) -> None:
    assert _fp(_data(**sampling)) != BASE


@pytest.mark.parametrize(
    "neutral",
    [{"top_k": 0}, {"top_k": -1}, {"min_p": 0.0}, {"repetition_penalty": 1.0}, {"min_tokens": 0}],
)
def test_vllms_sampling_extensions_at_their_neutral_value_keep_it(neutral: dict[str, Any]) -> None:
    assert _fp(_data(**neutral)) == BASE


def test_it_is_a_sha256_hex_digest() -> None:
    assert len(BASE) == 64
    assert int(BASE, 16) >= 0


def _schema(*order: str) -> dict[str, Any]:
    properties = {name: {"type": "integer"} for name in order}
    return {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": {"properties": properties}},
    }


def test_a_json_response_format_changes_it_and_plain_text_does_not() -> None:
    assert _fp(_data(response_format={"type": "text"})) == BASE
    as_object = _fp(_data(response_format={"type": "json_object"}))
    assert as_object != BASE
    assert len({BASE, as_object, _fp(_data(response_format=_schema("a", "b")))}) == 3


def test_a_schemas_property_order_changes_it() -> None:
    """The engine writes an object's properties in its schema's order: another answer."""
    assert _fp(_data(response_format=_schema("a", "b"))) != _fp(
        _data(response_format=_schema("b", "a"))
    )


def test_logit_bias_counts_by_content_not_order() -> None:
    assert _fp(_data(logit_bias={})) == BASE
    one, other = _fp(_data(logit_bias={"5": 1, "9": -2})), _fp(_data(logit_bias={"9": -2, "5": 1}))
    assert one == other != _fp(_data(logit_bias={"5": 1, "9": 2}))


def _tool(*order: str) -> dict[str, Any]:
    properties = {name: {"type": "string"} for name in order}
    parameters = {"type": "object", "properties": properties, "required": sorted(order)}
    return {"type": "function", "function": {"name": "book", "parameters": parameters}}


def test_a_tools_parameter_order_changes_it() -> None:
    """The template shows a tool's parameters in their order, and the engine writes a call's
    arguments so: {from, to} and {to, from} are two answers, as two response formats are."""
    one = _fp(_data(tools=[_tool("from", "to")], tool_choice="required"))
    assert one == _fp(_data(tools=[_tool("from", "to")], tool_choice="required"))
    assert one != _fp(_data(tools=[_tool("to", "from")], tool_choice="required"))
