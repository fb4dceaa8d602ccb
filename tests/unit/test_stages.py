"""The stream processor's stages one record at a time: admission, caches, completion."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from schemas.errors import ErrorCode
from schemas.names import (
    COMPLETIONS,
    DLQ,
    HEADER_ERROR_CODE,
    HEADER_REASON,
    HEADER_SOURCE_TOPIC,
    REQUESTS,
    REQUESTS_KEYED,
    RESULTS,
)
from schemas.request import InferenceRequest
from schemas.result import (
    CacheStatus,
    ChatCompletion,
    InferenceResult,
)
from schemas.route import Route
from schemas.work import WorkItem
from streams.coalesce import Coalescer
from tests.unit.stages import (
    MODEL,
    FakeStore,
    Pipeline,
    admitted,
    answer,
    completion,
    last_attempt,
    raw_request,
    result_of,
)


@pytest.fixture
def harness() -> Pipeline:
    return Pipeline()


def test_valid_request_is_routed_to_its_model_and_lane_keyed_by_fingerprint(
    harness: Pipeline,
) -> None:
    raw = raw_request()
    harness.on_request(b"req-1", raw)
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.smollm2-135m.interactive"
    work = WorkItem.model_validate_json(sent.value)
    assert sent.key == work.fingerprint.encode() == admitted(raw).fingerprint.encode()
    assert work.model == MODEL
    assert work.request.correlation_id == "req-1"
    # "Hi" (1 token at 4 characters a token, rounded up) + max_tokens 16: what the
    # autoscaler counts of it.
    assert sent.headers == {"llmq-tokens": b"17"}
    assert harness.store.results == {}


def test_lane_picks_the_work_topic(harness: Pipeline) -> None:
    for lane in ("batch", "standard"):
        data = json.loads(raw_request(cid=lane))
        data["lane"] = lane
        harness.on_request(None, json.dumps(data).encode())
    assert [s.topic for s in harness.send.sent] == [
        "llmq.work.smollm2-135m.batch",
        "llmq.work.smollm2-135m.standard",
    ]


def test_rejected_request_is_dead_lettered_and_answered_with_an_error(
    harness: Pipeline,
) -> None:
    raw = raw_request(max_tokens=0)
    harness.on_request(b"the-key", raw)
    dlq, reply = harness.send.sent
    assert (dlq.topic, dlq.key, dlq.value) == (DLQ, b"the-key", raw)
    assert dlq.headers is not None
    assert dlq.headers[HEADER_ERROR_CODE] == b"invalid_request"
    assert dlq.headers[HEADER_SOURCE_TOPIC] == REQUESTS.encode()
    assert b"body.max_tokens" in dlq.headers[HEADER_REASON]
    assert (reply.topic, reply.key) == ("app.replies", b"req-1")
    result = result_of(reply)
    assert result.status == "error"
    assert (result.correlation_id, result.tenant) == ("req-1", "acme")
    assert result.error is not None
    assert result.error.code is ErrorCode.INVALID_REQUEST
    assert not result.error.retriable
    assert harness.store.results["req-1"] == result


def test_unknown_model_is_rejected_with_its_own_code(harness: Pipeline) -> None:
    data = json.loads(raw_request())
    data["model"] = "gpt-4"
    harness.on_request(None, json.dumps(data).encode())
    dlq, reply = harness.send.sent
    assert dlq.headers is not None
    assert dlq.headers[HEADER_ERROR_CODE] == b"unknown_model"
    result = result_of(reply)
    assert result.error is not None
    assert result.error.code is ErrorCode.UNKNOWN_MODEL


def test_rejection_without_a_correlation_id_only_goes_to_the_dlq(harness: Pipeline) -> None:
    harness.on_request(b"k", b"not json at all")
    [dlq] = harness.send.sent
    assert (dlq.topic, dlq.key, dlq.value) == (DLQ, b"k", b"not json at all")
    assert dlq.headers is not None
    assert dlq.headers[HEADER_ERROR_CODE] == b"invalid_json"
    assert harness.store.results == {}


def test_cached_answer_is_served_without_routing(harness: Pipeline) -> None:
    raw = raw_request(cid="req-2", temperature=0)
    harness.store.answers[admitted(raw).fingerprint] = answer("cached text")
    harness.on_request(None, raw)
    [reply] = harness.send.sent
    assert (reply.topic, reply.key) == ("app.replies", b"req-2")
    result = result_of(reply)
    assert result.cache is CacheStatus.EXACT
    assert result.status == "ok"
    assert result.text == "cached text"
    assert result.response is not None
    assert result.response.id == "chatcmpl-req-2"
    assert harness.store.results["req-2"] == result


def test_cache_miss_is_routed(harness: Pipeline) -> None:
    raw = raw_request(temperature=0)
    harness.store.answers["some-other-fingerprint"] = answer("unrelated")
    harness.on_request(None, raw)
    [sent] = harness.send.sent
    assert sent.topic.startswith("llmq.work.")


def test_admission_tells_ahead_of_the_requests_it_sends_on_to_dedupe_only() -> None:
    told: list[WorkItem] = []
    harness = Pipeline(ahead=told.append)
    hit, miss = (
        raw_request(cid="hit", temperature=0),
        raw_request(cid="miss", messages=[{"role": "user", "content": "Bye"}]),
    )
    harness.store.answers[admitted(hit).fingerprint] = answer("cached text")
    harness.on_request(None, hit)
    harness.on_request(None, b"not json")
    assert told == []
    harness.on_request(None, miss)
    assert [w.request.correlation_id for w in told] == ["miss"]
    assert told[0].fingerprint == admitted(miss).fingerprint


@pytest.mark.parametrize(
    ("cache", "body"),
    [("auto", {"temperature": 0.7}), ("off", {"temperature": 0.0})],
    ids=["sampled", "cache-off"],
)
def test_non_cacheable_request_is_routed_even_when_cached(
    harness: Pipeline, cache: str, body: dict[str, Any]
) -> None:
    raw = raw_request(cache=cache, **body)
    harness.store.answers[admitted(raw).fingerprint] = answer("cached text")
    harness.on_request(None, raw)
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.smollm2-135m.interactive"
    assert harness.store.results == {}


def test_completion_of_a_cacheable_request_fills_the_cache_and_replies(
    harness: Pipeline,
) -> None:
    work = admitted(raw_request(temperature=0))
    harness.on_completion(completion(work, "Hello!"))
    assert harness.store.answers[work.fingerprint] == answer("Hello!")
    [reply] = harness.send.sent
    assert (reply.topic, reply.key, reply.headers) == ("app.replies", b"req-1", None)
    result = result_of(reply)
    assert result.status == "ok"
    assert result.text == "Hello!"
    assert result.cache is CacheStatus.NONE
    assert result.model_used == MODEL
    assert result.timings.engine_ms == 3.0
    assert harness.store.results["req-1"] == result


def test_completion_of_a_sampled_request_is_not_cached(harness: Pipeline) -> None:
    work = admitted(raw_request(temperature=0.7))
    harness.on_completion(completion(work, "Random"))
    assert harness.store.answers == {}
    assert harness.store.results["req-1"].text == "Random"
    assert [s.topic for s in harness.send.sent] == ["app.replies"]


def test_completion_with_cache_always_is_cached(harness: Pipeline) -> None:
    work = admitted(raw_request(cache="always", temperature=0.7))
    harness.on_completion(completion(work, "Kept"))
    assert harness.store.answers[work.fingerprint].choices[0].message.content == "Kept"


def test_failed_completion_is_not_cached_but_answered(harness: Pipeline) -> None:
    work = admitted(raw_request(temperature=0))
    harness.on_completion(completion(last_attempt(work), None))
    assert harness.store.answers == {}
    _, reply = harness.send.sent
    result = result_of(reply)
    assert result.status == "error"
    assert result.error is not None
    assert result.error.retriable
    assert harness.store.results["req-1"] == result


def test_duplicate_completion_keeps_the_first_result(harness: Pipeline) -> None:
    work = admitted(raw_request(temperature=0.7))
    harness.on_completion(completion(work, "first"))
    harness.on_completion(completion(work, "second"))
    assert harness.store.results["req-1"].text == "first"
    replies = [result_of(s) for s in harness.send.sent]
    assert [r.text for r in replies] == ["first", "first"], "a redelivery repeats the first"
    assert len(harness.send.sent) == 2


def test_completion_reply_goes_to_the_default_results_topic() -> None:
    harness = Pipeline()
    send = harness.send
    request = InferenceRequest.model_validate(
        {"correlation_id": "c9", "body": {"messages": [{"role": "user", "content": "x"}]}}
    )
    work = WorkItem(
        request=request,
        model=MODEL,
        fingerprint="f" * 64,
        route=Route(requested=MODEL, chain=[MODEL]),
    )
    harness.on_completion(completion(work))
    assert [(s.topic, s.key) for s in send.sent] == [(RESULTS, b"c9")]


@pytest.mark.parametrize("value", [b"garbage", b"{}", b'{"work": 1}'])
def test_unreadable_completion_goes_to_the_dlq(harness: Pipeline, value: bytes) -> None:
    harness.on_completion(value)
    [dlq] = harness.send.sent
    assert (dlq.topic, dlq.key, dlq.value) == (DLQ, None, value)
    assert dlq.headers is not None
    assert dlq.headers[HEADER_SOURCE_TOPIC] == COMPLETIONS.encode()
    assert dlq.headers[HEADER_ERROR_CODE] == ErrorCode.INTERNAL_ERROR.value.encode()
    assert dlq.headers[HEADER_REASON].startswith(b"unreadable completion")
    assert harness.store.results == {}
    assert harness.store.answers == {}


def test_a_rejection_without_a_usable_reply_topic_is_stored_and_sent_to_the_default() -> None:
    harness = Pipeline()
    store, send = harness.store, harness.send
    raw = json.dumps({"correlation_id": "lost-1", "reply_to": "not a topic!", "body": {}})
    harness.on_request(b"k", raw.encode())
    assert sorted(s.topic for s in send.sent) == sorted([DLQ, RESULTS])
    stored = store.results["lost-1"]
    assert stored.error is not None
    assert stored.error.code is ErrorCode.INVALID_REQUEST


class BrokenStore(FakeStore):
    """A store whose lookups fail, after `works` that did not, in a way the processor does
    not expect."""

    def __init__(self, works: int = 0) -> None:
        super().__init__()
        self.works = works

    async def cached(self, fingerprint: str) -> ChatCompletion | None:
        if self.works:
            self.works -= 1
            return None
        raise RuntimeError("store exploded")


def test_copies_kept_from_a_stale_leader_share_an_unexpected_failure_of_the_new_one() -> None:
    harness = Pipeline(BrokenStore(works=1))  # admission's look at the cache works
    old = admitted(raw_request("old", temperature=0))
    stale = Coalescer(harness.table, stale_after_s=600)
    long_ago = time.time() - 1_000
    stale.join(old.request, old.fingerprint, now=long_ago)
    kept = old.request.model_copy(update={"correlation_id": "kept"})
    stale.join(kept, old.fingerprint, now=long_ago + 1)
    harness.on_request(b"k", raw_request("new", temperature=0))
    replies = [result_of(s) for s in harness.send.sent if s.topic != DLQ]
    assert sorted((r.correlation_id, r.error and r.error.code) for r in replies) == [
        ("kept", ErrorCode.INTERNAL_ERROR),
        ("new", ErrorCode.INTERNAL_ERROR),
    ]
    assert all(r.error and r.error.retriable for r in replies)
    assert harness.table == {}


def test_an_unexpected_failure_at_admission_dead_letters_the_record_and_replies() -> None:
    harness = Pipeline(BrokenStore())
    harness.on_request(b"k", raw_request("boom-0", temperature=0))
    dlq, reply = harness.send.sent
    assert dlq.topic == DLQ and dlq.headers is not None
    assert dlq.headers[HEADER_SOURCE_TOPIC] == REQUESTS.encode()
    result = InferenceResult.model_validate_json(reply.value)
    assert result.error is not None and result.error.code is ErrorCode.INTERNAL_ERROR


def test_an_unexpected_failure_dead_letters_the_request_and_replies() -> None:
    harness = Pipeline(BrokenStore(works=1))  # admission's look at the cache works
    send = harness.send
    raw = raw_request("boom-1", temperature=0)
    harness.on_request(b"k", raw)
    assert [s.topic for s in send.sent] == [DLQ, "app.replies"]
    dlq = send.sent[0]
    assert dlq.headers is not None
    assert dlq.headers[HEADER_SOURCE_TOPIC] == REQUESTS_KEYED.encode()
    assert WorkItem.model_validate_json(dlq.value).request.correlation_id == "boom-1"
    assert harness.table == {}, "a failed leader must not leave copies waiting"
    reply = InferenceResult.model_validate_json(send.sent[1].value)
    assert reply.correlation_id == "boom-1"
    assert reply.error is not None
    assert reply.error.code is ErrorCode.INTERNAL_ERROR
    assert reply.error.retriable
    # The kind of failure alone: an exception's text may quote internals.
    assert reply.error.message == "the stream processor failed: RuntimeError"
