"""Prompts and answers stay out of logs unless asked for; validation errors and URLs are told
without the secrets in them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.redact import describe, explain, log_content, mask_url
from schemas.request import InferenceRequest
from tests.unit.stages import Pipeline

SECRET = "zebra-7f3a-do-not-log"


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, as an operator chasing a bug would set it; content logging is
    switched off again afterwards."""
    caplog.set_level(logging.DEBUG)
    try:
        yield caplog
    finally:
        log_content(False)


def _request(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "correlation_id": "c-1",
        "tenant": "acme",
        "body": {"messages": [{"role": "user", "content": f"my password is {SECRET}"}]},
    }
    return {**data, **changes}


def _invalid(data: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        InferenceRequest.model_validate(data)
    return caught.value


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"body": {"messages": [{"role": SECRET, "content": "hi"}]}}, "body.messages.0.role"),
        ({"body": {"messages": [{"role": "user", "content": "x"}], "stop": [SECRET * 20]}}, "stop"),
        ({"body": {"messages": [{"role": "user", "content": "x"}], "top_p": SECRET}}, "top_p"),
        ({"tenant": SECRET + " !"}, "tenant"),
        ({"lane": SECRET}, "lane"),
        ({"model": "a", "body": {**_request()["body"], "model": "b"}}, "request: Value error"),
    ],
    ids=["role", "stop", "number", "tenant", "lane", "whole-request"],
)
def test_describe_names_the_field_but_never_its_value(data: dict[str, Any], where: str) -> None:
    exc = _invalid(_request(**data))
    assert SECRET in repr(exc.errors()), "pydantic quotes the inputs: why describe exists"
    told = describe(exc)
    assert where in told
    assert SECRET not in told
    assert SECRET not in explain(exc)


def test_describe_quotes_and_cuts_an_unknown_key() -> None:
    hostile = "evil\nkey " + "x" * 100
    told = describe(_invalid(_request(**{hostile: 1})))
    assert "\n" not in told
    assert told.startswith("'evil\\nkey xxx")
    assert "x" * 40 not in told
    assert "Extra inputs are not permitted" in told


def test_describe_counts_what_it_leaves_out() -> None:
    body = {"messages": [], "max_tokens": 0, "temperature": 9, "top_p": -1, "seed": 2**63}
    told = describe(_invalid(_request(body=body, lane="x", cache="y")))
    assert told.count(": ") == 5
    assert told.endswith("; and 2 more")


def test_explain_keeps_other_exceptions_as_type_and_message() -> None:
    assert explain(RuntimeError("store exploded")) == "RuntimeError: store exploded"
    assert explain(TimeoutError()) == "TimeoutError"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://127.0.0.1:26379/0", "redis://127.0.0.1:26379/0"),
        (f"redis://:{SECRET}@cache:6379/0", "redis://:***@cache:6379/0"),
        (f"rediss://llmq:{SECRET}@cache:6380/1", "rediss://llmq:***@cache:6380/1"),
        (
            f"rediss://cache:6380/0?ssl_ca_certs=/etc/ca.pem&password={SECRET}",
            "rediss://cache:6380/0?ssl_ca_certs=/etc/ca.pem&password=***",
        ),
        ("redis://llmq@cache:6379/0", "redis://llmq@cache:6379/0"),
    ],
    ids=["no-password", "password", "user-and-tls", "query", "user-only"],
)
def test_mask_url_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_prompts_and_answers_stay_out_of_the_logs_by_default(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    Pipeline().on_request(b"k", json.dumps(_request()).encode())
    assert "admitted acme/c-1" not in debug_logs.text
    assert SECRET not in debug_logs.text


def test_an_invalid_request_is_logged_without_its_content(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    bad = _request(body={"messages": [{"role": SECRET, "content": SECRET}], "top_p": SECRET})
    harness = Pipeline()
    harness.on_request(b"k", json.dumps(bad).encode())
    assert harness.store.results["c-1"].error is not None, "it was rejected, with a reply"
    assert "rejected c-1" in debug_logs.text
    assert SECRET not in debug_logs.text


def test_log_content_lets_the_prompt_through_at_debug(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    log_content(True)
    Pipeline().on_request(b"k", json.dumps(_request()).encode())
    [line] = [r for r in debug_logs.records if r.name == "llmq.content"]
    assert line.levelno == logging.DEBUG
    assert line.getMessage().startswith("admitted acme/c-1: [('user', 'my password is zebra")
