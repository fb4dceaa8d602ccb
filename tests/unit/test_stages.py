"""The stream processor's three stages, with an in-memory store, table and a send that records."""

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
    REQUESTS_KEYED,
    RESULTS,
)
from schemas.work import Completion, WorkItem
from streams.admission import Admission, Compress, Gate
from streams.admit import admit
from streams.coalesce import Coalescer
from streams.complete import Complete
from streams.dedupe import Dedupe
from streams.outbox import Outbox

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


class Pipeline:
    """The three stages on one store, table and send, as the faust app wires them; records
    that admission re-keys are handed on to dedupe, as Kafka would."""

    def __init__(
        self,
        store: FakeStore | None = None,
        catalog: Catalog | None = None,
        gate: Gate | None = None,
        compress: Compress | None = None,
        send: FakeSend | None = None,
    ) -> None:
        self.store = store or FakeStore()
        self.send = send or FakeSend()
        self.table: dict[bytes, bytes] = {}
        catalog = catalog or Catalog.builtin()
        outbox = Outbox(self.store, self.send)
        coalescer = Coalescer(self.table, stale_after_s=600)
        self.admission = Admission(catalog, outbox, gate, compress)
        self.dedupe = Dedupe(outbox, coalescer, None)
        self.complete = Complete(catalog, outbox, coalescer, None)

    def on_request(self, key: bytes | None, raw: bytes) -> None:
        asyncio.run(self._on_request(key, raw))

    async def _on_request(self, key: bytes | None, raw: bytes) -> None:
        await self.admission.on_request(key, raw)
        while keyed := [s for s in self.send.sent if s.topic == REQUESTS_KEYED]:
            self.send.sent.remove(keyed[0])
            await self.dedupe.on_keyed(keyed[0].key, keyed[0].value)

    def on_completion(self, value: bytes) -> None:
        asyncio.run(self.complete.on_completion(None, value))


@pytest.fixture
def harness() -> Pipeline:
    return Pipeline()


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
    harness: Pipeline,
) -> None:
    raw = _raw()
    harness.on_request(b"req-1", raw)
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.smollm2-135m.interactive"
    work = WorkItem.model_validate_json(sent.value)
    assert sent.key == work.fingerprint.encode() == _work(raw).fingerprint.encode()
    assert work.model == MODEL
    assert work.request.correlation_id == "req-1"
    assert sent.headers is None
    assert harness.store.results == {}


def test_lane_picks_the_work_topic(harness: Pipeline) -> None:
    for lane in ("batch", "standard"):
        data = json.loads(_raw(cid=lane))
        data["lane"] = lane
        harness.on_request(None, json.dumps(data).encode())
    assert [s.topic for s in harness.send.sent] == [
        "llmq.work.smollm2-135m.batch",
        "llmq.work.smollm2-135m.standard",
    ]


def test_rejected_request_is_dead_lettered_and_answered_with_an_error(
    harness: Pipeline,
) -> None:
    raw = _raw(max_tokens=0)
    harness.on_request(b"the-key", raw)
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


def test_unknown_model_is_rejected_with_its_own_code(harness: Pipeline) -> None:
    data = json.loads(_raw())
    data["model"] = "gpt-4"
    harness.on_request(None, json.dumps(data).encode())
    dlq, reply = harness.send.sent
    assert dlq.headers is not None
    assert dlq.headers[HEADER_ERROR_CODE] == b"unknown_model"
    result = _result(reply)
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
    raw = _raw(cid="req-2", temperature=0)
    harness.store.answers[_work(raw).fingerprint] = _answer("cached text")
    harness.on_request(None, raw)
    [reply] = harness.send.sent
    assert (reply.topic, reply.key) == ("app.replies", b"req-2")
    result = _result(reply)
    assert result.cache is CacheStatus.EXACT
    assert result.status == "ok"
    assert result.text == "cached text"
    assert result.response is not None
    assert result.response.id == "chatcmpl-req-2"
    assert harness.store.results["req-2"] == result


def test_cache_miss_is_routed(harness: Pipeline) -> None:
    raw = _raw(temperature=0)
    harness.store.answers["some-other-fingerprint"] = _answer("unrelated")
    harness.on_request(None, raw)
    [sent] = harness.send.sent
    assert sent.topic.startswith("llmq.work.")


@pytest.mark.parametrize(
    ("cache", "body"),
    [("auto", {"temperature": 0.7}), ("off", {"temperature": 0.0})],
    ids=["sampled", "cache-off"],
)
def test_non_cacheable_request_is_routed_even_when_cached(
    harness: Pipeline, cache: str, body: dict[str, Any]
) -> None:
    raw = _raw(cache=cache, **body)
    harness.store.answers[_work(raw).fingerprint] = _answer("cached text")
    harness.on_request(None, raw)
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.smollm2-135m.interactive"
    assert harness.store.results == {}


def test_completion_of_a_cacheable_request_fills_the_cache_and_replies(
    harness: Pipeline,
) -> None:
    work = _work(_raw(temperature=0))
    harness.on_completion(_completion(work, "Hello!"))
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


def test_completion_of_a_sampled_request_is_not_cached(harness: Pipeline) -> None:
    work = _work(_raw(temperature=0.7))
    harness.on_completion(_completion(work, "Random"))
    assert harness.store.answers == {}
    assert harness.store.results["req-1"].text == "Random"
    assert [s.topic for s in harness.send.sent] == ["app.replies"]


def test_completion_with_cache_always_is_cached(harness: Pipeline) -> None:
    work = _work(_raw(cache="always", temperature=0.7))
    harness.on_completion(_completion(work, "Kept"))
    assert harness.store.answers[work.fingerprint].choices[0].message.content == "Kept"


def test_failed_completion_is_not_cached_but_answered(harness: Pipeline) -> None:
    work = _work(_raw(temperature=0))
    harness.on_completion(_completion(work, None))
    assert harness.store.answers == {}
    [reply] = harness.send.sent
    result = _result(reply)
    assert result.status == "error"
    assert result.error is not None
    assert result.error.retriable
    assert harness.store.results["req-1"] == result


def test_duplicate_completion_keeps_the_first_result(harness: Pipeline) -> None:
    work = _work(_raw(temperature=0.7))
    harness.on_completion(_completion(work, "first"))
    harness.on_completion(_completion(work, "second"))
    assert harness.store.results["req-1"].text == "first"
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
    harness.on_completion(_completion(work))
    assert [(s.topic, s.key) for s in send.sent] == [(RESULTS, b"c9")]


@pytest.mark.parametrize("value", [b"garbage", b"{}", b'{"work": 1}'])
def test_unreadable_completion_goes_to_the_dlq(harness: Pipeline, value: bytes) -> None:
    harness.on_completion(value)
    [dlq] = harness.send.sent
    assert (dlq.topic, dlq.key, dlq.value) == (DLQ, None, value)
    assert dlq.headers is not None
    assert dlq.headers[HEADER_SOURCE_TOPIC] == COMPLETIONS.encode()
    assert dlq.headers[HEADER_ERROR_CODE] == b"invalid_request"
    assert dlq.headers[HEADER_REASON].startswith(b"unreadable completion")
    assert harness.store.results == {}
    assert harness.store.answers == {}


def test_a_rejection_without_a_usable_reply_topic_is_still_stored_for_its_id() -> None:
    harness = Pipeline()
    store, send = harness.store, harness.send
    raw = json.dumps({"correlation_id": "lost-1", "reply_to": "not a topic!", "body": {}})
    harness.on_request(b"k", raw.encode())
    assert [s.topic for s in send.sent] == [DLQ]
    stored = store.results["lost-1"]
    assert stored.error is not None
    assert stored.error.code is ErrorCode.INVALID_REQUEST


class BrokenStore(FakeStore):
    """A store whose lookups fail in a way the processor does not expect."""

    async def cached(self, fingerprint: str) -> ChatCompletion | None:
        raise RuntimeError("store exploded")


def test_an_unexpected_failure_dead_letters_the_request_and_replies() -> None:
    harness = Pipeline(BrokenStore())
    send = harness.send
    raw = _raw("boom-1", temperature=0)
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
    assert "store exploded" in reply.error.message


def _copies(harness: Pipeline, n: int, **body: Any) -> list[WorkItem]:
    """n identical deterministic requests, each with its own id and reply topic."""
    for i in range(n):
        data = json.loads(_raw(cid=f"copy-{i}", temperature=0, **body))
        data["reply_to"] = f"app.replies.{i % 3}"
        data["created_at"] = 1_000.0 + i
        harness.on_request(None, json.dumps(data).encode())
    return [WorkItem.model_validate_json(s.value) for s in harness.send.sent]


def test_identical_requests_in_flight_share_one_generation(harness: Pipeline) -> None:
    [work] = _copies(harness, 100)
    assert work.request.correlation_id == "copy-0"
    harness.send.sent.clear()
    harness.on_completion(_completion(work, "Shared"))
    results = [_result(s) for s in harness.send.sent]
    assert sorted(r.correlation_id or "" for r in results) == sorted(
        f"copy-{i}" for i in range(100)
    )
    for sent, result in zip(harness.send.sent, results, strict=True):
        cid = result.correlation_id or ""
        i = int(cid.split("-")[1])
        assert (sent.topic, sent.key) == (f"app.replies.{i % 3}", cid.encode())
        assert result.text == "Shared"
        assert result.response is not None
        assert i == 0 or result.response.id == f"chatcmpl-copy-{i}"
        assert result.cache is (CacheStatus.NONE if i == 0 else CacheStatus.COALESCED)
    assert harness.table == {}
    # The answer is cached now: a later copy is served from the cache, not coalesced.
    harness.send.sent.clear()
    harness.on_request(None, _raw(cid="copy-late", temperature=0))
    [late] = harness.send.sent
    assert _result(late).cache is CacheStatus.EXACT


def test_followers_share_the_leaders_error_too(harness: Pipeline) -> None:
    [work] = _copies(harness, 3)
    harness.send.sent.clear()
    harness.on_completion(_completion(work, None))
    results = [_result(s) for s in harness.send.sent]
    assert [r.status for r in results] == ["error"] * 3
    assert harness.store.answers == {}


def test_sampled_copies_are_not_coalesced(harness: Pipeline) -> None:
    for i in range(3):
        harness.on_request(None, _raw(cid=f"s-{i}", temperature=0.9))
    assert [s.topic for s in harness.send.sent] == ["llmq.work.smollm2-135m.interactive"] * 3
    assert harness.table == {}


class FlakySend(FakeSend):
    """Fails the first reply, as a broker that goes away would."""

    failed = False

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        if topic.startswith("app.replies") and not self.failed:
            self.failed = True
            raise ConnectionError("broker gone")
        await super().__call__(topic, key, value, headers)


def test_followers_survive_a_failed_reply_until_the_completion_is_redelivered() -> None:
    flaky = FlakySend()
    harness = Pipeline(send=flaky)
    [work] = _copies(harness, 5)
    flaky.sent.clear()
    harness.on_completion(_completion(work, "Late"))  # the broker fails mid-reply
    assert harness.table != {}, "the entry stays until every reply is acknowledged"
    harness.on_completion(_completion(work, "Late"))  # Kafka redelivers the uncommitted record
    answered = {_result(s).correlation_id for s in flaky.sent if s.topic.startswith("app.")}
    assert answered == {f"copy-{i}" for i in range(5)}
    assert harness.table == {}


def test_a_stale_leader_is_replaced_and_its_followers_inherited() -> None:
    table: dict[bytes, bytes] = {}
    coalescer = Coalescer(table, stale_after_s=10)
    request = InferenceRequest.model_validate(
        {"correlation_id": "a", "body": {"messages": [{"role": "user", "content": "x"}]}}
    )
    assert not coalescer.join(request, "fp", now=100)
    assert coalescer.join(request.model_copy(update={"correlation_id": "b"}), "fp", now=105)
    assert not coalescer.join(request.model_copy(update={"correlation_id": "c"}), "fp", now=120)
    assert coalescer.followers("fp") == 1
    assert [w.correlation_id for w in coalescer.waiters("fp", 0, 1)] == ["b"]


TIERED = Catalog.model_validate(
    {
        "default": "small",
        "routing": {"cascade": True, "escalate_below": -1.0},
        "models": [
            {"name": "small", "source": "/m/small", "tier": 1, "fallback": ["backup"]},
            {"name": "big", "source": "/m/big", "tier": 2},
            {"name": "backup", "source": "/m/backup", "tier": 1},
        ],
    }
)


def _tiered_work(harness: Pipeline, model: str, cid: str = "t-1") -> WorkItem:
    data = json.loads(_raw(cid=cid, temperature=0))
    data["model"] = model
    harness.on_request(None, json.dumps(data).encode())
    [sent] = harness.send.sent
    harness.send.sent.clear()
    return WorkItem.model_validate_json(sent.value)


def test_an_unsure_answer_escalates_and_followers_keep_waiting() -> None:
    harness = Pipeline(catalog=TIERED)
    work = _tiered_work(harness, "auto")
    assert (work.model, work.route.chain[:2]) == ("small", ["small", "big"])
    assert work.route.cascade
    data = json.loads(_raw(cid="t-2", temperature=0))
    harness.on_request(None, json.dumps({**data, "model": "auto"}).encode())
    assert harness.send.sent == [], "the copy follows the generation in flight"
    unsure = Completion.model_validate_json(_completion(work, "Maybe?")).model_copy(
        update={"mean_logprob": -2.5}
    )
    harness.on_completion(unsure.model_dump_json().encode())
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.big.interactive"
    escalated = WorkItem.model_validate_json(sent.value)
    assert escalated.fingerprint == work.fingerprint
    assert (escalated.route.tried, escalated.route.escalated) == (["small"], True)
    harness.send.sent.clear()
    sure = Completion.model_validate_json(_completion(escalated, "Surely.")).model_copy(
        update={"mean_logprob": -0.1}
    )
    harness.on_completion(sure.model_dump_json().encode())
    results = {r.correlation_id: r for r in map(_result, harness.send.sent)}
    assert set(results) == {"t-1", "t-2"}
    assert all(r.model_used == "big" and r.text == "Surely." for r in results.values())
    assert all(r.route is not None and r.route.escalated for r in results.values())


def test_an_engine_failure_falls_back_to_the_next_model() -> None:
    harness = Pipeline(catalog=TIERED)
    work = _tiered_work(harness, "small")
    assert (work.route.chain, work.route.cascade) == (["small", "backup"], False)
    harness.on_completion(_completion(work, None))  # engine_error
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.backup.interactive"
    fallback = WorkItem.model_validate_json(sent.value)
    assert fallback.route.fell_back and not fallback.route.escalated
    harness.send.sent.clear()
    harness.on_completion(_completion(fallback, None))  # the chain is exhausted: answer
    [reply] = harness.send.sent
    result = _result(reply)
    assert result.status == "error"
    assert result.route is not None
    assert result.route.tried == ["small"]


class GateSaysNo:
    async def check(self, request: InferenceRequest) -> None:
        raise LlmqError(ErrorCode.RATE_LIMITED, "over 2 requests per minute", retry_after_s=7.5)


def test_a_refused_request_is_answered_but_not_dead_lettered() -> None:
    harness = Pipeline(gate=GateSaysNo())
    harness.on_request(None, _raw(cid="r-1"))
    [reply] = harness.send.sent
    result = _result(reply)
    assert result.error is not None
    assert (result.error.code, result.error.retry_after_s) == (ErrorCode.RATE_LIMITED, 7.5)


def test_compression_changes_what_the_engine_sees_and_keeps_the_original() -> None:
    def squeeze(messages: list[ChatMessage]) -> list[ChatMessage]:
        return [m.model_copy(update={"content": " ".join(m.content.split())}) for m in messages]

    harness = Pipeline(compress=squeeze)
    raw = json.dumps(
        {"correlation_id": "z", "body": {"messages": [{"role": "user", "content": "a    b  "}]}}
    )
    harness.on_request(None, raw.encode())
    work = WorkItem.model_validate_json(harness.send.sent[0].value)
    assert work.request.body.messages[0].content == "a b"
    assert work.uncompressed is not None
    assert work.uncompressed[0].content == "a    b  "


def test_an_expired_request_is_answered_as_it_is_instead_of_escalated() -> None:
    harness = Pipeline(catalog=TIERED)
    work = _tiered_work(harness, "auto")
    expired = work.model_copy(update={"request": work.request.model_copy(update={"deadline": 1.0})})
    unsure = Completion.model_validate_json(_completion(expired, "Maybe?")).model_copy(
        update={"mean_logprob": -2.5}
    )
    harness.on_completion(unsure.model_dump_json().encode())
    [reply] = harness.send.sent
    result = _result(reply)
    assert (result.status, result.text, result.model_used) == ("ok", "Maybe?", "small")
