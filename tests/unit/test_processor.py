"""The stream processor's logic, with an in-memory store and a send that records."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

import pytest

from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatMessage, InferenceRequest
from schemas.result import (
    CacheStatus,
    ChatCompletion,
    Choice,
    ErrorInfo,
    InferenceResult,
    Timings,
    Usage,
)
from schemas.route import Route
from schemas.topics import (
    COMPLETIONS,
    DLQ,
    HEADER_ERROR_CODE,
    HEADER_REASON,
    HEADER_SOURCE_TOPIC,
    REQUESTS,
    RESULTS,
)
from schemas.work import Completion, WorkItem
from streams.admit import admit
from streams.processor import Processor

MODEL = "smollm2-135m"


class FakeStore:
    """The Store protocol on dicts; the first result per correlation_id wins."""

    def __init__(self) -> None:
        self.answers: dict[str, ChatCompletion] = {}
        self.results: dict[str, InferenceResult] = {}

    async def cached(self, fingerprint: str) -> ChatCompletion | None:
        return self.answers.get(fingerprint)

    async def cache(self, fingerprint: str, response: ChatCompletion) -> None:
        self.answers[fingerprint] = response

    async def keep_result(self, result: InferenceResult) -> None:
        if result.correlation_id is not None:
            self.results.setdefault(result.correlation_id, result)


class Sent(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    headers: Mapping[str, bytes] | None


class FakeSend:
    """Records every publish, in order."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        self.sent.append(Sent(topic, key, value, headers))


class Harness(NamedTuple):
    processor: Processor
    store: FakeStore
    send: FakeSend


@pytest.fixture
def harness() -> Harness:
    store, send = FakeStore(), FakeSend()
    return Harness(Processor(Catalog.builtin(), store, send), store, send)


def _raw(cid: str = "req-1", cache: str = "auto", **body: Any) -> bytes:
    data = {
        "correlation_id": cid,
        "tenant": "acme",
        "lane": "interactive",
        "reply_to": "app.replies",
        "cache": cache,
        "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16, **body},
    }
    return json.dumps(data).encode()


def _work(raw: bytes) -> WorkItem:
    work = admit(raw, Catalog.builtin())
    assert isinstance(work, WorkItem)
    return work


def _answer(text: str) -> ChatCompletion:
    return ChatCompletion(
        id="chatcmpl-first",
        created=1,
        model=MODEL,
        choices=[Choice(message=ChatMessage(role="assistant", content=text), finish_reason="stop")],
        usage=Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4),
    )


def _completion(work: WorkItem, text: str | None = "Hello!") -> bytes:
    error = ErrorInfo.from_error(LlmqError(ErrorCode.ENGINE_ERROR, "boom"))
    completion = Completion(
        work=work,
        response=None if text is None else _answer(text),
        error=error if text is None else None,
        timings=Timings(queue_ms=1.0, ttft_ms=2.0, engine_ms=3.0),
        worker="w1",
    )
    return completion.model_dump_json().encode()


def _result(sent: Sent) -> InferenceResult:
    return InferenceResult.model_validate_json(sent.value)


def test_valid_request_is_routed_to_its_model_and_lane_keyed_by_fingerprint(
    harness: Harness,
) -> None:
    raw = _raw()
    asyncio.run(harness.processor.on_request(b"req-1", raw))
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.smollm2-135m.interactive"
    work = WorkItem.model_validate_json(sent.value)
    assert sent.key == work.fingerprint.encode() == _work(raw).fingerprint.encode()
    assert work.model == MODEL
    assert work.request.correlation_id == "req-1"
    assert sent.headers is None
    assert harness.store.results == {}


def test_lane_picks_the_work_topic(harness: Harness) -> None:
    for lane in ("batch", "standard"):
        data = json.loads(_raw(cid=lane))
        data["lane"] = lane
        asyncio.run(harness.processor.on_request(None, json.dumps(data).encode()))
    assert [s.topic for s in harness.send.sent] == [
        "llmq.work.smollm2-135m.batch",
        "llmq.work.smollm2-135m.standard",
    ]


def test_rejected_request_is_dead_lettered_and_answered_with_an_error(
    harness: Harness,
) -> None:
    raw = _raw(max_tokens=0)
    asyncio.run(harness.processor.on_request(b"the-key", raw))
    dlq, reply = harness.send.sent
    assert (dlq.topic, dlq.key, dlq.value) == (DLQ, b"the-key", raw)
    assert dlq.headers is not None
    assert dlq.headers[HEADER_ERROR_CODE] == b"invalid_request"
    assert dlq.headers[HEADER_SOURCE_TOPIC] == REQUESTS.encode()
    assert b"body.max_tokens" in dlq.headers[HEADER_REASON]
    assert (reply.topic, reply.key) == ("app.replies", b"req-1")
    result = _result(reply)
    assert result.status == "error"
    assert (result.correlation_id, result.tenant) == ("req-1", "acme")
    assert result.error is not None
    assert result.error.code is ErrorCode.INVALID_REQUEST
    assert not result.error.retriable
    assert harness.store.results["req-1"] == result


def test_unknown_model_is_rejected_with_its_own_code(harness: Harness) -> None:
    data = json.loads(_raw())
    data["model"] = "gpt-4"
    asyncio.run(harness.processor.on_request(None, json.dumps(data).encode()))
    dlq, reply = harness.send.sent
    assert dlq.headers is not None
    assert dlq.headers[HEADER_ERROR_CODE] == b"unknown_model"
    result = _result(reply)
    assert result.error is not None
    assert result.error.code is ErrorCode.UNKNOWN_MODEL


def test_rejection_without_a_correlation_id_only_goes_to_the_dlq(harness: Harness) -> None:
    asyncio.run(harness.processor.on_request(b"k", b"not json at all"))
    [dlq] = harness.send.sent
    assert (dlq.topic, dlq.key, dlq.value) == (DLQ, b"k", b"not json at all")
    assert dlq.headers is not None
    assert dlq.headers[HEADER_ERROR_CODE] == b"invalid_json"
    assert harness.store.results == {}


def test_cached_answer_is_served_without_routing(harness: Harness) -> None:
    raw = _raw(cid="req-2", temperature=0)
    harness.store.answers[_work(raw).fingerprint] = _answer("cached text")
    asyncio.run(harness.processor.on_request(None, raw))
    [reply] = harness.send.sent
    assert (reply.topic, reply.key) == ("app.replies", b"req-2")
    result = _result(reply)
    assert result.cache is CacheStatus.EXACT
    assert result.status == "ok"
    assert result.text == "cached text"
    assert result.response is not None
    assert result.response.id == "chatcmpl-req-2"
    assert harness.store.results["req-2"] == result


def test_cache_miss_is_routed(harness: Harness) -> None:
    raw = _raw(temperature=0)
    harness.store.answers["some-other-fingerprint"] = _answer("unrelated")
    asyncio.run(harness.processor.on_request(None, raw))
    [sent] = harness.send.sent
    assert sent.topic.startswith("llmq.work.")


@pytest.mark.parametrize(
    ("cache", "body"),
    [("auto", {"temperature": 0.7}), ("off", {"temperature": 0.0})],
    ids=["sampled", "cache-off"],
)
def test_non_cacheable_request_is_routed_even_when_cached(
    harness: Harness, cache: str, body: dict[str, Any]
) -> None:
    raw = _raw(cache=cache, **body)
    harness.store.answers[_work(raw).fingerprint] = _answer("cached text")
    asyncio.run(harness.processor.on_request(None, raw))
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.smollm2-135m.interactive"
    assert harness.store.results == {}


def test_completion_of_a_cacheable_request_fills_the_cache_and_replies(
    harness: Harness,
) -> None:
    work = _work(_raw(temperature=0))
    asyncio.run(harness.processor.on_completion(_completion(work, "Hello!")))
    assert harness.store.answers[work.fingerprint] == _answer("Hello!")
    [reply] = harness.send.sent
    assert (reply.topic, reply.key, reply.headers) == ("app.replies", b"req-1", None)
    result = _result(reply)
    assert result.status == "ok"
    assert result.text == "Hello!"
    assert result.cache is CacheStatus.NONE
    assert result.model_used == MODEL
    assert result.timings.engine_ms == 3.0
    assert harness.store.results["req-1"] == result


def test_completion_of_a_sampled_request_is_not_cached(harness: Harness) -> None:
    work = _work(_raw(temperature=0.7))
    asyncio.run(harness.processor.on_completion(_completion(work, "Random")))
    assert harness.store.answers == {}
    assert harness.store.results["req-1"].text == "Random"
    assert [s.topic for s in harness.send.sent] == ["app.replies"]


def test_completion_with_cache_always_is_cached(harness: Harness) -> None:
    work = _work(_raw(cache="always", temperature=0.7))
    asyncio.run(harness.processor.on_completion(_completion(work, "Kept")))
    assert harness.store.answers[work.fingerprint].choices[0].message.content == "Kept"


def test_failed_completion_is_not_cached_but_answered(harness: Harness) -> None:
    work = _work(_raw(temperature=0))
    asyncio.run(harness.processor.on_completion(_completion(work, None)))
    assert harness.store.answers == {}
    [reply] = harness.send.sent
    result = _result(reply)
    assert result.status == "error"
    assert result.error is not None
    assert result.error.retriable
    assert harness.store.results["req-1"] == result


def test_duplicate_completion_keeps_the_first_result(harness: Harness) -> None:
    work = _work(_raw(temperature=0.7))
    asyncio.run(harness.processor.on_completion(_completion(work, "first")))
    asyncio.run(harness.processor.on_completion(_completion(work, "second")))
    assert harness.store.results["req-1"].text == "first"
    assert len(harness.send.sent) == 2


def test_completion_reply_goes_to_the_default_results_topic() -> None:
    store, send = FakeStore(), FakeSend()
    processor = Processor(Catalog.builtin(), store, send)
    request = InferenceRequest.model_validate(
        {"correlation_id": "c9", "body": {"messages": [{"role": "user", "content": "x"}]}}
    )
    work = WorkItem(
        request=request,
        model=MODEL,
        fingerprint="f" * 64,
        route=Route(requested=MODEL, chain=[MODEL]),
    )
    asyncio.run(processor.on_completion(_completion(work)))
    assert [(s.topic, s.key) for s in send.sent] == [(RESULTS, b"c9")]


@pytest.mark.parametrize("value", [b"garbage", b"{}", b'{"work": 1}'])
def test_unreadable_completion_goes_to_the_dlq(harness: Harness, value: bytes) -> None:
    asyncio.run(harness.processor.on_completion(value))
    [dlq] = harness.send.sent
    assert (dlq.topic, dlq.key, dlq.value) == (DLQ, None, value)
    assert dlq.headers is not None
    assert dlq.headers[HEADER_SOURCE_TOPIC] == COMPLETIONS.encode()
    assert dlq.headers[HEADER_ERROR_CODE] == b"invalid_request"
    assert dlq.headers[HEADER_REASON].startswith(b"unreadable completion")
    assert harness.store.results == {}
    assert harness.store.answers == {}


def test_a_rejection_without_a_usable_reply_topic_is_still_stored_for_its_id() -> None:
    store, send = FakeStore(), FakeSend()
    processor = Processor(Catalog.builtin(), store, send)
    raw = json.dumps({"correlation_id": "lost-1", "reply_to": "not a topic!", "body": {}})
    asyncio.run(processor.on_request(b"k", raw.encode()))
    assert [s.topic for s in send.sent] == [DLQ]
    stored = store.results["lost-1"]
    assert stored.error is not None
    assert stored.error.code is ErrorCode.INVALID_REQUEST


class BrokenStore(FakeStore):
    """A store whose lookups fail in a way the processor does not expect."""

    async def cached(self, fingerprint: str) -> ChatCompletion | None:
        raise RuntimeError("store exploded")


def test_an_unexpected_failure_dead_letters_the_request_and_replies() -> None:
    store, send = BrokenStore(), FakeSend()
    processor = Processor(Catalog.builtin(), store, send)
    raw = _raw("boom-1", temperature=0)
    asyncio.run(processor.on_request(b"k", raw))
    assert [s.topic for s in send.sent] == [DLQ, "app.replies"]
    assert send.sent[0].value == raw
    reply = InferenceResult.model_validate_json(send.sent[1].value)
    assert reply.correlation_id == "boom-1"
    assert reply.error is not None
    assert reply.error.code is ErrorCode.INTERNAL_ERROR
    assert reply.error.retriable
    assert "store exploded" in reply.error.message
